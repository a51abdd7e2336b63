#!/usr/bin/env bash
# The npm packages of package.json (MathJax for the HTML reports) into the git-ignored node_modules/. Quick when the
# pinned versions are already there. Needs npm (scripts/setup_system.sh installs it with apt-get when missing).
# Usage: bash scripts/setup_web.sh   (from anywhere; works in the repo root)
set -euo pipefail
cd "$(dirname "$0")/.."
installed_ok() {
  node -e '
    const want = require("./package.json").dependencies;
    for (const [name, version] of Object.entries(want)) {
      let got = null;
      try { got = require("./node_modules/" + name + "/package.json").version; } catch (e) {}
      if (got !== version) process.exit(1);
    }' 2>/dev/null
}
installed_ok && exit 0
if ! command -v npm >/dev/null 2>&1; then
  echo "npm is missing: run 'make system' as root, or: sudo apt-get install -y npm" >&2
  exit 1
fi
echo "installing npm packages of package.json into node_modules/ (MathJax for the reports)"
# exact versions in package.json and no dependencies below them: no lock file to keep
npm install --no-package-lock --no-audit --no-fund --loglevel=error
installed_ok || { echo "node_modules/ does not hold the versions package.json pins" >&2; exit 1; }
