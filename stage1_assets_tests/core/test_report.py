"""core/report.py: markdown tables that stay tables whatever the cells hold."""

import re

import pytest

from stage1_assets.core.report import markdown_table

# GitHub-flavoured markdown splits a row at every `|` that is not part of a backslash escape, and a
# backslash escapes any ASCII punctuation character (a backslash included) - the GFM table rule.
CELL_SPLIT = re.compile(r"((?:\\[!-/:-@\[-`{-~]|[^|\\]|\\)*)\|")


def cells(line: str) -> list[str]:
    """A table row's cells as a GFM renderer splits them."""
    assert line.startswith("| ") and line.endswith(" |"), line
    parts = CELL_SPLIT.findall(line[1:])
    return [p.strip() for p in parts]


def body_rows(table: str) -> list[list[str]]:
    lines = table.splitlines()
    return [cells(line) for line in lines[2:]]


def test_no_rows_is_a_placeholder_not_an_empty_table():
    assert markdown_table([], ["a", "b"]) == "_(none)_"


def test_header_separator_and_one_line_per_row():
    rows = [{"id": 1, "text": "x"}, {"id": 2, "text": "y"}, {"id": 3, "text": "z"}]
    lines = markdown_table(rows, ["id", "text"]).splitlines()
    assert len(lines) == 2 + len(rows)
    assert cells(lines[0]) == ["id", "text"]
    assert lines[1] == "|---|---|"
    assert [r[0] for r in body_rows(markdown_table(rows, ["id", "text"]))] == ["1", "2", "3"]


def test_columns_pick_and_order_fields_and_a_missing_field_is_an_empty_cell():
    table = markdown_table([{"b": "B", "a": "A", "extra": "never shown"}], ["a", "missing", "b"])
    assert body_rows(table) == [["A", "", "B"]]
    assert "never shown" not in table


def test_a_pipe_in_a_cell_is_escaped_and_does_not_add_a_column():
    table = markdown_table([{"cmd": "grep x | wc -l", "n": 2}], ["cmd", "n"])
    [row] = body_rows(table)
    assert row == ["grep x \\| wc -l", "2"]


def test_newlines_and_runs_of_whitespace_collapse_so_a_row_stays_on_one_line():
    table = markdown_table([{"response": "First line.\n\nSecond\tline.\r\n", "n": 1}], ["response", "n"])
    assert len(table.splitlines()) == 3
    assert body_rows(table) == [["First line. Second line.", "1"]]


def test_floats_get_three_decimals_other_values_their_str():
    [row] = body_rows(markdown_table([{"f": 2 / 3, "i": 7, "b": True, "n": None}], ["f", "i", "b", "n"]))
    assert row == ["0.667", "7", "True", "None"]


@pytest.mark.parametrize("length", [5, 10, 11, 40])
def test_long_cells_are_cut_to_max_chars_with_an_ellipsis(length):
    [[cell]] = body_rows(markdown_table([{"t": "x" * length}], ["t"], max_chars=10))
    if length <= 10:
        assert cell == "x" * length
    else:
        assert cell == "x" * 9 + "…" and len(cell) == 10


def test_truncation_never_leaves_a_pipe_unescaped():
    """A cut between the escaping backslash and its pipe must drop the pipe, not the backslash."""
    for cut in range(2, 12):
        [row] = body_rows(markdown_table([{"t": "ab|cd|ef|gh", "n": 0}], ["t", "n"], max_chars=cut))
        assert len(row) == 2 and row[1] == "0", (cut, row)


def test_a_backslash_before_a_pipe_does_not_split_the_cell():
    [row] = body_rows(markdown_table([{"t": r"norm \|x\| of x", "n": 0}], ["t", "n"]))
    assert len(row) == 2 and row[1] == "0"
