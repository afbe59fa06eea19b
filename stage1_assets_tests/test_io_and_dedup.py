import json

import pytest

from stage1_assets.core import dedup
from stage1_assets.core.io import InputFileError, atomic_path, atomic_write_text, read_jsonl


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b'{"instruction": "ok"}\n\xff\xfe bad\n', ":2: not valid UTF-8"),
        (b'{"instruction": "ok"}\n{"instruction": \n', ":2: malformed JSON"),
        (b'{"id": "a", "instruction": "ok"}\n{"id": "b"}\n', ":2: field 'instruction' is missing or empty"),
        (b'{"id": "a", "instruction": "  "}\n', ":1: field 'instruction' is missing or empty"),
        (b'{"id": "a", "instruction": "x"}\n{"id": "a", "instruction": "y"}\n', ":2: duplicate id 'a'"),
        (b'["not", "an", "object"]\n', ":1: expected a JSON object"),
    ],
)
def test_bad_jsonl_names_file_line_and_problem(tmp_path, content, message):
    path = tmp_path / "tests.jsonl"
    path.write_bytes(content)
    with pytest.raises(InputFileError) as err:
        read_jsonl(path, required=("instruction",))
    assert str(path) in str(err.value) and message in str(err.value)


def test_atomic_write_leaves_old_content_when_writing_fails(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_text(target, json.dumps({"v": 1}))

    class Boom(Exception):
        pass

    with pytest.raises(Boom), atomic_path(target) as tmp:
        tmp.write_text('{"v": 2, "trunc')  # crash mid-write
        raise Boom
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_dedup_exact_and_near_duplicates():
    texts = [
        "Explain why the sky is blue during the day.",
        "explain why the sky is blue during the day!",
        "Explain why the sky is blue during the day time.",
        "List three ways to save water at home.",
        "What is the capital of France?",
        "What is the capital of Spain?",
    ]
    kept, dropped = dedup.deduplicate(texts)
    assert kept == [0, 3, 4, 5]
    assert dropped[1] == (0, "exact")
    assert dropped[2][0] == 0 and dropped[2][1].startswith("near:")


def test_full_disk_fails_with_the_path_and_leaves_no_corrupt_artifact(tmp_path, monkeypatch):
    import errno
    import os

    target = tmp_path / "pairs.jsonl"
    atomic_write_text(target, "complete old content\n")

    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match=f"could not write {target}: No space left on device"):
        atomic_write_text(target, "new content that does not fit\n")
    assert target.read_text() == "complete old content\n"
    assert [p.name for p in tmp_path.iterdir()] == ["pairs.jsonl"]
