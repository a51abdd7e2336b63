#!/usr/bin/env bash
# System packages, each installed only when the thing it provides is missing:
# - Tesseract with Japanese + English data, and the fonts of the rendered OCR evaluation and benchmark images
#   (so8t_core/ops/ocr_synth.py: serif, sans and mono, Latin and CJK);
# - the freely licensed vocabularies the embedded base's corpus is built from (WordNet, IPAdic, EDICT; see
#   so8t_core/lm/lexicon.py);
# - Node.js with npm (installs MathJax for the HTML reports, scripts/setup_web.sh), only when no `node` is on the
#   PATH: Debian's `npm` conflicts with a Node.js from another source (NodeSource's ships npm itself);
# - Chromium and its WebDriver (the browser tests: reports' math, JupyterLab's widgets).
# Installs what is missing with apt-get when run as root, else prints the exact command.
#
# Usage: bash scripts/setup_system.sh [--dry-run]
#   --dry-run                 print the apt-get line it would run (or nothing when nothing is missing) and exit
#   SO8T_ASSUME_MISSING=1     every package check reports "missing", as on a bare machine; the Node.js check stays
#                             real (a machine of CI's kind has Node.js with npm from its own repository)
#   SO8T_ASSUME_NO_NODE=1     the Node.js check reports "no node" too (a bare machine without any Node.js)
set -euo pipefail
dry_run=0
for arg in "$@"; do
  case "$arg" in
    --dry-run) dry_run=1 ;;
    *) echo "setup_system.sh: unknown argument '$arg' (usage: setup_system.sh [--dry-run])" >&2; exit 2 ;;
  esac
done
assume_missing=${SO8T_ASSUME_MISSING:-0}

# has CHECK...: runs the check, or fails at once when every check is to report "missing"
has() { [ "$assume_missing" = 1 ] && return 1; "$@" >/dev/null 2>&1; }
has_font() { has grep -qi "$1" <<<"$fonts"; }
has_lang() { has grep -qx "$1" <<<"$langs"; }

missing=()
langs=$(tesseract --list-langs 2>/dev/null || true)
fonts=$(fc-list : family 2>/dev/null || true)
has command -v tesseract || missing+=(tesseract-ocr)
has_lang jpn || missing+=(tesseract-ocr-jpn)
has_lang eng || missing+=(tesseract-ocr-eng)
has_font "Noto Sans CJK" || missing+=(fonts-noto-cjk)
has_font "Liberation Serif" || missing+=(fonts-liberation2)
has_font "DejaVu Sans Mono" || missing+=(fonts-dejavu-core)
has_font "IPAGothic" || missing+=(fonts-ipafont-gothic)
has_font "IPAMincho" || missing+=(fonts-ipafont-mincho)
has test -f /usr/share/wordnet/data.noun || missing+=(wordnet-base)
has test -f /usr/share/mecab/dic/ipadic/Verb.csv || missing+=(mecab-ipadic)
has test -f /usr/share/edict/edict || missing+=(edict)
has command -v chromium || missing+=(chromium)
has command -v chromedriver || missing+=(chromium-driver)
# fc-list is how the font checks see; without it every font reads as missing
has command -v fc-list || missing+=(fontconfig)

node_note=""
if [ "${SO8T_ASSUME_NO_NODE:-0}" != 1 ] && command -v node >/dev/null 2>&1; then
  # A Node.js is there: never ask apt for Debian's npm beside it (they conflict); npm must come with that Node.js.
  command -v npm >/dev/null 2>&1 \
    || node_note="node is on the PATH without npm: install npm from the same source as $(command -v node)"
else
  missing+=(nodejs npm)
fi

if [ "$dry_run" = 1 ]; then
  [ ${#missing[@]} -eq 0 ] || echo "apt-get install -y --no-install-recommends ${missing[*]}"
  [ -z "$node_note" ] || echo "note: $node_note" >&2
  exit 0
fi
[ -z "$node_note" ] || echo "setup_system.sh: $node_note (scripts/setup_web.sh needs it)" >&2
if [ ${#missing[@]} -eq 0 ]; then
  echo "system packages: all present"
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "system packages: installing the missing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y --no-install-recommends ${missing[*]}" >&2
  echo "(conda users: conda install -c conda-forge tesseract nodejs, plus the jpn traineddata; a Chromium with its chromedriver)" >&2
  exit 1
fi
