#!/usr/bin/env bash
# System packages: Tesseract with Japanese + English data and the fonts of the rendered OCR evaluation and
# benchmark images (so8t_core/ops/ocr_synth.py: serif, sans and mono, Latin and CJK); the freely licensed
# vocabularies the embedded base's corpus is built from (WordNet, IPAdic, EDICT; see so8t_core/lm/lexicon.py); npm
# (installs MathJax for the HTML reports, scripts/setup_web.sh); Chromium and its WebDriver (the browser tests:
# reports' math, JupyterLab's widgets). Installs them with apt-get when run as root, else prints the exact command.
set -euo pipefail
pkgs=(tesseract-ocr tesseract-ocr-jpn tesseract-ocr-eng fonts-noto-cjk fonts-liberation2 fonts-dejavu-core
  fonts-ipafont-gothic fonts-ipafont-mincho wordnet-base mecab-ipadic edict npm chromium chromium-driver)
missing=()
command -v tesseract >/dev/null 2>&1 || missing+=(tesseract-ocr)
if command -v tesseract >/dev/null 2>&1; then
  langs=$(tesseract --list-langs 2>/dev/null || true)
  grep -qx jpn <<<"$langs" || missing+=(tesseract-ocr-jpn)
  grep -qx eng <<<"$langs" || missing+=(tesseract-ocr-eng)
fi
fonts=$(fc-list : family 2>/dev/null || true)
grep -qi "Noto Sans CJK" <<<"$fonts" || missing+=(fonts-noto-cjk)
grep -qi "Liberation Serif" <<<"$fonts" || missing+=(fonts-liberation2)
grep -qi "DejaVu Sans Mono" <<<"$fonts" || missing+=(fonts-dejavu-core)
grep -qi "IPAGothic" <<<"$fonts" || missing+=(fonts-ipafont-gothic)
grep -qi "IPAMincho" <<<"$fonts" || missing+=(fonts-ipafont-mincho)
[ -f /usr/share/wordnet/data.noun ] || missing+=(wordnet-base)
[ -f /usr/share/mecab/dic/ipadic/Verb.csv ] || missing+=(mecab-ipadic)
[ -f /usr/share/edict/edict ] || missing+=(edict)
command -v npm >/dev/null 2>&1 || missing+=(npm)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" fontconfig >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${pkgs[*]}" >&2
  echo "(conda users: conda install -c conda-forge tesseract nodejs, plus the jpn traineddata; a Chromium with its chromedriver)" >&2
  exit 1
fi
