#!/usr/bin/env bash
# System packages the OCR stage needs: Tesseract with Japanese + English data, and the fonts of the rendered
# evaluation and benchmark images (so8t_core/ops/ocr_synth.py: serif, sans and mono, Latin and CJK).
# Installs them with apt-get when run as root, else prints the exact command.
set -euo pipefail
pkgs=(tesseract-ocr tesseract-ocr-jpn tesseract-ocr-eng fonts-noto-cjk fonts-liberation2 fonts-dejavu-core
  fonts-ipafont-gothic fonts-ipafont-mincho)
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
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing system packages: ${pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" fontconfig >/dev/null
else
  echo "missing system packages: ${missing[*]}" >&2
  echo "install them with:  sudo apt-get install -y ${pkgs[*]}" >&2
  echo "(conda users: conda install -c conda-forge tesseract, plus the jpn traineddata)" >&2
  exit 1
fi
