"""pyproject lists onpolicy's packages by hand (kernels/ is mapped to onpolicy.kernels): the list must name every
package folder, or a non-editable install silently lacks it."""
import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_pyproject_lists_every_package():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        tool = tomllib.load(f)["tool"]["setuptools"]
    found = {"onpolicy.kernels"}
    for dirpath, _, files in os.walk(os.path.join(ROOT, "onpolicy")):
        if "__init__.py" in files and "__pycache__" not in dirpath:
            found.add(os.path.relpath(dirpath, ROOT).replace(os.sep, "."))
    assert set(tool["packages"]) == found
    assert tool["package-dir"] == {"onpolicy.kernels": "kernels"}
    assert os.path.isfile(os.path.join(ROOT, "kernels", "__init__.py"))
