"""Every command of the README runs here, as docs/readme_commands.yaml says: tiny settings appended where a command
would run for minutes, expected `error:` lines where it needs weights, data, a GPU or a cluster this machine lacks
(magicbokeh/utils/readme_commands.py). `python scripts/benchmark.py readme` times the same runs."""

from __future__ import annotations

import pytest

from magicbokeh.utils.readme_commands import (
    README,
    PlanRunner,
    load_plan,
    make_dry_run,
    readme_commands,
    unplanned,
)

STEPS = load_plan()


def _id(step) -> str:
    return step.text[:90]


def test_every_readme_command_has_exactly_one_step_in_the_plan():
    missing, stale = unplanned(readme_commands(README.read_text()), STEPS)
    assert not missing, f"README commands docs/readme_commands.yaml does not run: {missing}"
    assert not stale, f"docs/readme_commands.yaml runs commands the README no longer has: {stale}"
    texts = [step.text for step in STEPS]
    assert len(texts) == len(set(texts))


def test_commands_are_read_with_their_continuation_lines_and_without_comments():
    text = (
        "Intro\n```bash\npython a.py \\\n    b=1 'c=[x, y]'  # a note\n\nmake c   # another\n```\n"
        "```python\nx = 1\n```\n"
    )
    commands = readme_commands(text)
    assert [(command.line, command.words) for command in commands] == [
        (3, ("python", "a.py", "b=1", "c=[x, y]")),
        (6, ("make", "c")),
    ]


def test_a_step_that_names_the_checkpoint_runs_the_smoke_step_first(tmp_path):
    runner = PlanRunner(STEPS, tmp_path)
    render = next(step for step in STEPS if "focus.mask=mask.png" in step.text)
    assert [step.text for step in runner.dependencies(render)] == ["python scripts/train.py experiment=smoke"]


@pytest.mark.parametrize("step", [s for s in STEPS if s.make_runs], ids=_id)
def test_make_targets_run_the_commands_the_plan_says(step):
    printed = make_dry_run(step.command[1])
    for command in step.make_runs:
        assert command in printed, f"`make -n {step.command[1]}` does not run {command!r}:\n{printed}"


@pytest.fixture(scope="module")
def runner(tmp_path_factory):
    return PlanRunner(STEPS, tmp_path_factory.mktemp("readme"))


@pytest.mark.slow
@pytest.mark.parametrize("step", [s for s in STEPS if s.expect != "not_run"], ids=_id)
def test_readme_command(step, runner):
    outcome = runner.run(step)
    problem = outcome.problem()
    assert problem is None, f"{' '.join(outcome.words)}\n→ {problem}\n{outcome.output}"
