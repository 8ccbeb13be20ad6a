"""Results files: what they record, and README tables that cannot drift from them."""

from __future__ import annotations

import json
import re

import pytest

from magicbokeh.errors import ConfigError
from magicbokeh.utils import results
from magicbokeh.utils.results import (
    REPO_ROOT,
    Table,
    main,
    read_results,
    referenced_results,
    render_markdown,
    write_results,
)


def _write_example(directory):
    table = Table(["task", "psnr"], [["bokeh", 21.404], ["sr", 22.3149]], ["", ".2f"])
    return write_results(
        "example", {"bokeh": 21.404}, title="an example", tables={"main": table}, command="python x.py",
        seed=3, out_dir=directory,
    )  # fmt: skip


def test_a_results_file_records_command_commit_hardware_and_versions(tmp_path):
    document = json.loads(_write_example(tmp_path).read_text())
    assert document["command"] == "python x.py" and document["seed"] == 3 and document["schema"] == 1
    env = document["environment"]
    recorded = {"date", "commit", "dirty", "cpu", "cpu_cores", "load_average", "gpus", "cuda", "python", "versions"}
    assert set(env) >= recorded
    assert env["versions"]["torch"] and env["cpu_cores"] >= 1
    assert len(env["commit"]) == 40  # the tests run inside the repository's git checkout
    assert read_results("example", tmp_path)["figures"] == {"bokeh": 21.404}


def test_tables_render_with_their_formats_and_a_source_line(tmp_path):
    _write_example(tmp_path)
    text = "before\n<!-- results: example#main -->\nstale\n<!-- /results -->\nafter\n"
    rendered = render_markdown(text, tmp_path)
    assert "| bokeh | 21.40 |" in rendered and "| sr | 22.31 |" in rendered and "stale" not in rendered
    assert "`results/example.json` · `python x.py`" in rendered
    assert " · load " in rendered  # how busy the machine was: wall times depend on it
    assert rendered.startswith("before\n") and rendered.endswith("after\n")
    assert render_markdown(rendered, tmp_path) == rendered  # idempotent


def test_indented_blocks_render_indented(tmp_path):
    """A block inside a Markdown list item keeps the item's indentation, so the table stays inside the item."""
    _write_example(tmp_path)
    text = "- item:\n\n    <!-- results: example#main -->\n    <!-- /results -->\n- next\n"
    rendered = render_markdown(text, tmp_path)
    block = rendered.split("    <!-- results: example#main -->\n")[1].split("<!-- /results -->")[0]
    assert all(line.startswith("    ") for line in block.splitlines() if line.strip())
    assert "    | sr | 22.31 |" in block and rendered.endswith("    <!-- /results -->\n- next\n")
    assert render_markdown(rendered, tmp_path) == rendered


def test_check_fails_when_a_rendered_number_is_edited(tmp_path, monkeypatch):
    _write_example(tmp_path)
    monkeypatch.setenv(results.RESULTS_DIR_ENV, str(tmp_path))
    page = tmp_path / "page.md"
    page.write_text(render_markdown("<!-- results: example#main -->\n<!-- /results -->\n", tmp_path))
    assert main(["--check", str(page)]) == 0
    page.write_text(page.read_text().replace("22.31", "22.41"))
    assert main(["--check", str(page)]) == 1
    assert main([str(page)]) == 0 and "22.31" in page.read_text()  # without --check it re-renders


def test_missing_values_are_stored_as_null_and_printed_as_a_dash(tmp_path):
    """A NaN cell (e.g. an initialisation score a resumed run does not have) is valid JSON null and renders "–"."""
    table = Table(["task", "psnr"], [["bokeh", float("nan")]], ["", ".2f"])
    write_results("gaps", {"psnr": float("nan")}, title="x", tables={"main": table}, out_dir=tmp_path)
    document = read_results("gaps", tmp_path)
    assert document["tables"]["main"]["rows"] == [["bokeh", None]] and document["figures"] == {"psnr": None}
    assert "| bokeh | – |" in render_markdown("<!-- results: gaps#main -->\n<!-- /results -->\n", tmp_path)


def test_unknown_table_and_bad_names_are_errors(tmp_path):
    _write_example(tmp_path)
    with pytest.raises(ConfigError, match="no table 'other'"):
        render_markdown("<!-- results: example#other -->\n<!-- /results -->", tmp_path)
    with pytest.raises(ConfigError, match="no results file"):
        read_results("missing", tmp_path)
    with pytest.raises(ConfigError, match="may only hold"):
        write_results("../escape", {}, title="x", out_dir=tmp_path)


COMMITTED = REPO_ROOT / "results"


def test_readme_tables_agree_with_their_results_files():
    """Every generated block of the README equals what its committed results file renders (edit a number: this
    fails)."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert referenced_results(readme), "the README has no generated results block"
    assert render_markdown(readme, COMMITTED) == readme, (
        "README is out of date: python -m magicbokeh.utils.results README.md"
    )


def test_editing_one_readme_number_fails_the_check():
    """The check above is not vacuous: change one digit inside the README's first table and it fails."""
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = readme.index("<!-- results: ")
    table_row = readme.index("\n| ", start) + 1
    digit = re.search(r"\d", readme[table_row:]).start() + table_row
    edited = readme[:digit] + str((int(readme[digit]) + 1) % 10) + readme[digit + 1 :]
    assert render_markdown(edited, COMMITTED) != edited


@pytest.mark.parametrize("path", sorted(COMMITTED.glob("*.json")), ids=lambda path: path.stem)
def test_committed_results_files_say_how_they_were_made(path):
    """Each file under results/ names its command, a clean commit, its hardware and versions."""
    document = read_results(path.stem, COMMITTED)
    assert document["name"] == path.stem and document["title"]
    assert document["command"].startswith("python "), document["command"]
    env = document["environment"]
    # Made from a committed tree: the commit describes the code that produced the figures.
    assert env["commit"] and len(env["commit"]) == 40 and env["dirty"] is False
    assert env["versions"]["torch"] and env["cpu_cores"] >= 1
    for table in document["tables"].values():
        Table.from_json(table).markdown()  # every table renders
