"""README stays true: CI runs its test command, and its quick start runs."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read(path):
    with open(os.path.join(ROOT, path)) as f:
        return f.read()


def test_ci_runs_the_readme_test_command():
    readme_cmds = re.search(r"## Set up.*?```bash\n(.*?)```", read("README.md"), re.S).group(1)
    test_cmd = [line for line in readme_cmds.splitlines() if "pytest" in line]
    assert len(test_cmd) == 1
    ci_lines = [line.strip() for line in read(".ci/run").splitlines() if line.strip()]
    assert ci_lines[-1] == test_cmd[0].strip()


def test_quick_start_runs():
    code = re.search(r"## Quick start.*?```python\n(.*?)```", read("README.md"), re.S).group(1)
    scope = {}
    exec(compile(code, "README quick start", "exec"), scope)
    for name in ("images", "slow"):
        assert scope[name].shape == (3, 1, 16, 16)
        assert scope[name].abs().max() <= 1
