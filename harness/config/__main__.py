"""``python -m harness.config docs``: regenerate the key tables in suites/README.md."""
import sys

from .docs import update_readme

if sys.argv[1:] != ["docs"]:
    sys.exit("usage: python -m harness.config docs   (regenerate the tables in suites/README.md)")
print("updated" if update_readme() else "up to date")
