"""The repository's address, set once: `REPOSITORY` in setup.py, the README's Colab badges, the notebooks' REPO_URL.

    python .ci/set_repository.py https://github.com/<owner>/<name>   # rewrite all of them
    python .ci/set_repository.py --check                              # exit 1 if they disagree

The notebooks clone the repository before the package exists on the Colab machine, so they cannot
read the address from the package: it is written into them, and this script keeps the copies equal
to setup.py's (`tests/test_repository.py` runs the check).
"""

import json
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = ("notebooks/sskt_quickstart.ipynb", "notebooks/bring_your_own.ipynb")
_GITHUB = re.compile(r"https://github\.com/([A-Za-z0-9][A-Za-z0-9-]*)/([A-Za-z0-9._-]+?)(?:\.git)?/?")
_SETUP = re.compile(r'^REPOSITORY = "([^"]*)"$', re.M)
_BADGE = re.compile(r"https://colab\.research\.google\.com/github/([^/]+)/([^/]+)/blob/main/")
_REPO_URL = re.compile(r'REPO_URL = \\"([^"\\]*)\\"')  # inside the notebook's JSON string


def repository(root=ROOT):
    """setup.py's `REPOSITORY`, e.g. `https://github.com/owner/sskt_tf`."""
    with open(os.path.join(root, "setup.py"), encoding="utf-8") as f:
        return _SETUP.search(f.read()).group(1)


def mismatches(root=ROOT):
    """Every place whose address differs from setup.py's: a list of `file: found` lines (empty: they agree)."""
    expected = _GITHUB.fullmatch(repository(root)).groups()
    found = []
    with open(os.path.join(root, "README.md"), encoding="utf-8") as f:
        badges = _BADGE.findall(f.read())
    found += [f"README.md: {'/'.join(b)}" for b in badges if b != expected]
    if not badges:
        found.append("README.md: no Colab badge")
    for path in NOTEBOOKS:
        with open(os.path.join(root, path), encoding="utf-8") as f:
            urls = _REPO_URL.findall(f.read())
        found += [f"{path}: {u}" for u in urls if _GITHUB.fullmatch(u) is None or _GITHUB.fullmatch(u).groups() != expected]
        if not urls:
            found.append(f"{path}: no REPO_URL")
    return found


def set_repository(url, root=ROOT):
    """Writes `url` (https://github.com/<owner>/<name>) into setup.py, the README's badges and the notebooks."""
    match = _GITHUB.fullmatch(url)
    if match is None:
        raise ValueError(f"expected https://github.com/<owner>/<name>. Received: {url!r}")
    owner, name = match.groups()
    edits = {
        "setup.py": lambda text: _SETUP.sub(f'REPOSITORY = "https://github.com/{owner}/{name}"', text),
        "README.md": lambda text: _BADGE.sub(f"https://colab.research.google.com/github/{owner}/{name}/blob/main/", text),
    }
    for path in NOTEBOOKS:
        edits[path] = lambda text: _REPO_URL.sub(f'REPO_URL = \\\\"https://github.com/{owner}/{name}.git\\\\"', text)
    for path, edit in edits.items():
        full = os.path.join(root, path)
        with open(full, encoding="utf-8") as f:
            text = f.read()
        new = edit(text)
        if path.endswith(".ipynb"):
            json.loads(new)  # Still a notebook.
        with open(full, "w", encoding="utf-8") as f:
            f.write(new)


def main(argv):
    if argv == ["--check"]:
        wrong = mismatches()
        for line in wrong:
            print(f"differs from setup.py's REPOSITORY ({repository()}): {line}", file=sys.stderr)
        return 1 if wrong else 0
    if len(argv) != 1:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        set_repository(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
