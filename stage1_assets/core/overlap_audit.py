"""An independent audit of test-set overlap in the SFT data, in DuckDB SQL.

The merge filters pairs with `merge.TestSetIndex` (Python: n-gram patterns indexed by their first
two words, prefix-filtered Jaccard). Checking its output with the same index would find nothing
by construction, so this audit re-derives overlap from the definition with other code: words by
a SQL regular expression, n-gram containment by substring search over the whole normalised text,
Jaccard by a join on shared words, and exact normalised-text equality. A bug in the filter shows
up as a row here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .dedup import NEAR_DUPLICATE_JACCARD
from .merge import CONTAMINATION_NGRAM

AUDIT_SQL = """
WITH
sft AS (SELECT CAST(id AS VARCHAR) AS id, instruction, response FROM read_json($sft, format = 'newline_delimited')),
sft_words AS (
    SELECT id, field, regexp_extract_all(lower(text), '[a-z0-9]+') AS words
    FROM (SELECT id, 'instruction' AS field, instruction AS text FROM sft
          UNION ALL SELECT id, 'response', response FROM sft)
),
test AS (
    SELECT instruction AS text, row_number() OVER () - 1 AS test_id
    FROM read_json($test, format = 'newline_delimited')
),
test_words AS (
    SELECT test_id, regexp_extract_all(lower(text), '[a-z0-9]+') AS words FROM test
),
-- a test instruction's patterns: its n-grams, or itself whole when shorter than n words
patterns AS (
    SELECT test_id, array_to_string(words[k : k + $n - 1], ' ') AS pattern
    FROM test_words, range(1, greatest(len(words) - $n + 2, 2)) AS r(k)
    WHERE len(words) > 0
),
ngram_hits AS (
    SELECT s.id, s.field, p.test_id, 'shares a word n-gram' AS how
    FROM sft_words s JOIN patterns p
      ON contains(' ' || array_to_string(s.words, ' ') || ' ', ' ' || p.pattern || ' ')
),
exact_hits AS (
    SELECT s.id, s.field, t.test_id, 'identical after normalisation' AS how
    FROM sft_words s JOIN test_words t ON s.words = t.words AND s.field = 'instruction'
),
sft_sets AS (
    SELECT id, list_distinct(words) AS words FROM sft_words WHERE field = 'instruction'
),
test_sets AS (SELECT test_id, list_distinct(words) AS words FROM test_words),
shared AS (
    SELECT s.id, t.test_id, count(*) AS common, any_value(len(s.words)) AS a, any_value(len(t.words)) AS b
    FROM (SELECT id, unnest(words) AS w, words FROM sft_sets) s
    JOIN (SELECT test_id, unnest(words) AS w, words FROM test_sets) t USING (w)
    GROUP BY s.id, t.test_id
),
jaccard_hits AS (
    SELECT id, 'instruction' AS field, test_id, 'word-set jaccard ' || round(common / (a + b - common), 2) AS how
    FROM shared WHERE common / (a + b - common) >= $jaccard
)
SELECT h.id, h.field, t.text, h.how
FROM (SELECT * FROM ngram_hits UNION SELECT * FROM exact_hits UNION SELECT * FROM jaccard_hits) h
JOIN test t USING (test_id)
ORDER BY h.id, h.field, h.test_id, h.how
"""


def audit_overlap(sft_path: Path, test_path: Path, n: int = CONTAMINATION_NGRAM) -> list[dict[str, Any]]:
    """Every (SFT row, field, test instruction) that overlaps, with how, read straight from the two JSONL
    files (`id`/`instruction`/`response` and `instruction`); empty when the data is clean."""
    import duckdb

    with duckdb.connect() as con:
        rows = con.execute(
            AUDIT_SQL, {"sft": str(sft_path), "test": str(test_path), "n": n, "jaccard": NEAR_DUPLICATE_JACCARD}
        ).fetchall()
    return [{"id": row_id, "field": field, "test_instruction": text, "why": how} for row_id, field, text, how in rows]
