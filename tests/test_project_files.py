"""The README's two commands, .ci/run and pixi.toml's tasks must stay the same commands."""
import re
import tomllib

from shared.paths import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text()
CI = (REPO_ROOT / ".ci" / "run").read_text()
PIXI = tomllib.loads((REPO_ROOT / "pixi.toml").read_text())


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", README, flags=re.S)
    return [line.strip() for b in blocks for line in b.splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command():
    ci_lines = [l.strip() for l in CI.splitlines() if l.strip() and not l.lstrip().startswith("#")]
    test_cmd = next(l for l in ci_lines if "pytest" in l)
    assert test_cmd in _readme_commands()


def test_readme_has_a_demo_command_that_sets_up_and_runs_the_demo():
    demo = [c for c in _readme_commands() if c.endswith("calico demo")]
    assert demo and "pip install" in demo[0]


def test_pixi_tasks_name_the_readme_commands():
    tasks = PIXI["tasks"]
    cmds = _readme_commands()
    assert any(c.endswith(tasks["demo"]) for c in cmds)
    assert any(c.endswith(tasks["test"]) for c in cmds)
    for script in re.findall(r"python (\S+\.py)", tasks["bench"]):
        assert (REPO_ROOT / script).is_file(), script


def test_pyproject_bounds_match_the_measured_environment():
    meta = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]
    deps = " ".join(meta["dependencies"])
    for bound in ("numpy>=1.26,<2", "nuscenes-devkit==1.2.0", "pyarrow>=15,<26", "zarr>=3.1,<3.1.6"):
        assert bound in deps
    assert "pixi" not in deps and all("pixi" not in d for ds in meta["optional-dependencies"].values() for d in ds)
