"""Does a response go on to start a new prompt? The rule behind the runaway QC metric.

A base model that answers a request often keeps writing the document it thinks it is in: the next
"Instruction:" turn, a list of new questions, a new task. Each rule below names what it found, so
a flagged example says which rule fired. Long, detailed answers are not runaways, and neither are
numbered answer steps, a markdown heading, or a rhetorical question answered in the same line.

Rules, looked for line by line after the answer has started:
  labelled_turn      a line that opens a turn: "Instruction:", "Q:", "Question 2:", "User:", "Task:"...,
                     a "###" delimiter / a heading naming a turn ("### Instruction"), or such a label
                     after a finished sentence inside a line ("... Hamlet. Question 2: Who ...")
  numbered_question  a list item that is a question ("1. What is ...?"), even on the first line
  new_question       a line of its own after the first that is only a question ("What is ...?")
  new_task           a later paragraph that sets a new task: one that asks for information or text
                     ("Describe why ...", "Name a ..."), another task verb with a task's object or
                     opener ("Now write a poem about ...", "Give three examples of ..."), the request
                     again with new values ("Convert 10 km to miles."), or a task numbered 2 or more
                     where no list began ("Joyful.\n\n2. Give a synonym for sad.")
  multiple_choice    lettered options ("A) ...", "B) ...") when the request offered none
Question rules are off when the request wants questions (a quiz, interview questions); a poem, song
or dialogue may hold question lines, but not a numbered list of questions.
"""

from __future__ import annotations

import re

TURN_WORDS = r"instruction|input|response|question|q|user|human|assistant|task|exercise|prompt"
LABELLED_TURN = re.compile(rf"^(?:#+\s*)?(?:{TURN_WORDS})\s*\d*\s*[:：]", re.IGNORECASE)
HEADING = re.compile(r"^#{1,6}(?:\s+(?P<title>.*))?$")
# a turn label inside a line, after a finished sentence: "... wrote Hamlet. Question 2: Who wrote ...?"
INLINE_TURN = re.compile(
    r"[.!?]\s+(?:Instruction|Input|Response|Question|Q|User|Human|Task|Exercise|Prompt)\s*\d*\s*:\s*\S"
)
NUMBERED_ITEM = re.compile(r"^\(?(?P<number>\d{1,3})[.)]\s+")
HEADING_TURN = re.compile(rf"^(?:{TURN_WORDS}|next|new)\b", re.IGNORECASE)
LIST_MARKER = re.compile(r"^(?:\d{1,3}[.)]|[-*•]|\(\d{1,3}\))\s+")
OPTION_MARKER = re.compile(r"^\(?[A-Da-d][).]\s+\S")
QUESTION_LINE = re.compile(r"^[^?]*\?[\"'”’)\]]*$")
# verbs that ask for information or text: an answer's own steps ("Water the plant.") seldom start with them
ASKING_VERBS = (
    r"explain|describe|name|define|identify|summari[sz]e|compare|classify|translate|rewrite|paraphrase|solve|"
    r"tell me|answer|correct|discuss|outline|calculate|compute"
)
TASK_VERBS = rf"{ASKING_VERBS}|write|list|give|create|compose|find|generate|suggest|provide|convert|draft|design|" + (
    r"make up|come up with|make|shorten|simplify"
)
OPENER = r"^(?:(?:now|next|then|also|finally)\s*,?\s+)?(?:please\s+)?"
NEW_TASK = re.compile(rf"{OPENER}(?:{TASK_VERBS})\b", re.IGNORECASE)
ASKING_TASK = re.compile(rf"{OPENER}(?:{ASKING_VERBS})\b", re.IGNORECASE)
STRONG_TASK_OPENER = re.compile(rf"^(?:now|next)\s*,?\s+(?:please\s+)?(?:{TASK_VERBS})\b", re.IGNORECASE)
NEW_SUM = re.compile(
    r"^(?:now\s*,?\s+)?(?:multiply|divide|subtract|add)\s+[\d,.]+\s+(?:by|from|to|and)\s+[\d,.]+", re.IGNORECASE
)
GENRES = (
    r"poem|story|essay|sentence|paragraph|haiku|limerick|letter|email|list|summary|recipe|tweet|slogan|title|"
    r"headline|description|joke|riddle|dialogue|song|speech|review|question|questions|word|words|synonym|antonym|"
    r"reply|message|note|caption|post|ad|advert|invitation|toast|plan"
)
# what a task asks for: "the following", "a short poem", "into French", or its input after a colon
TASK_OBJECT = re.compile(
    rf"\bthe following\b|\b(?:an?|one|two|three|four|five)\s+(?:[\w-]+\s+)?(?:{GENRES})\b|"
    r"\binto (?:english|french|spanish|german|italian|chinese|japanese|portuguese|russian|arabic|dutch)\b|"
    r"[:?]\s*$|:\s+\S",
    re.IGNORECASE,
)
# requests whose answer may itself hold questions (a quiz, interview questions), or question lines (a poem)
QUESTIONS_WANTED = re.compile(r"\b(?:questions?|ask|asking|quiz|interview|faq|riddles?|trivia)\b", re.IGNORECASE)
CREATIVE = re.compile(
    r"\b(?:poems?|poetry|haiku|verses?|songs?|lyrics|limerick|dialogues?|conversation|story|script)\b", re.IGNORECASE
)
EXCERPT_CHARS = 60
REPEAT_SHARE = 0.6  # of the request's informative words in a later line that starts with the request's verb


def _excerpt(line: str) -> str:
    return line if len(line) <= EXCERPT_CHARS else line[: EXCERPT_CHARS - 1] + "…"


def _is_question_line(text: str) -> bool:
    return bool(QUESTION_LINE.match(text)) and len(text) > 3


def _repeats_request(instruction: str, line: str) -> bool:
    """The request's own task verb and most of its words again: the same task with new values."""
    from .response_rules import informative_words  # response_rules imports this module

    verb = instruction.split(maxsplit=1)[0].lower() if instruction.strip() else ""
    if not NEW_TASK.match(line) or line.split(maxsplit=1)[0].lower() != verb:
        return False
    asked = informative_words(instruction)
    return len(asked) >= 2 and len(asked & informative_words(line)) >= REPEAT_SHARE * len(asked)


def runaway_reason(instruction: str, response: str) -> str | None:
    """Which rule finds a new prompt in `response` (answering `instruction`), and where; None if none."""
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    questions_allowed = bool(QUESTIONS_WANTED.search(instruction))
    question_lines_allowed = questions_allowed or bool(CREATIVE.search(instruction))
    instruction_has_options = any(OPTION_MARKER.match(part.strip()) for part in re.split(r"[\n;]", instruction))
    options_seen, list_started = 0, False
    for k, line in enumerate(lines):
        if INLINE_TURN.search(line):
            return f"labelled_turn: {_excerpt(line)}"
        heading = HEADING.match(line)
        if heading:
            title = (heading.group("title") or "").strip()
            if not title or HEADING_TURN.match(title):
                return f"labelled_turn: {_excerpt(line)}"
            continue
        if LABELLED_TURN.match(line):
            return f"labelled_turn: {_excerpt(line)}"
        item = LIST_MARKER.sub("", line)
        if item != line and _is_question_line(item) and not questions_allowed:
            return f"numbered_question: {_excerpt(line)}"
        numbered = NUMBERED_ITEM.match(line)
        if numbered and k > 0 and not list_started and int(numbered.group("number")) >= 2 and NEW_TASK.match(item):
            return f"new_task: {_excerpt(line)}"
        list_started = list_started or item != line
        if k == 0:
            continue
        if item == line and _is_question_line(line) and not question_lines_allowed:
            return f"new_question: {_excerpt(line)}"
        asks = ASKING_TASK.match(line) or STRONG_TASK_OPENER.match(line) or TASK_OBJECT.search(line)
        if item == line and (
            (NEW_TASK.match(line) and asks) or NEW_SUM.match(line) or _repeats_request(instruction, line)
        ):
            return f"new_task: {_excerpt(line)}"
        options_seen = options_seen + 1 if OPTION_MARKER.match(line) else 0
        if options_seen >= 2 and not instruction_has_options:
            return f"multiple_choice: {_excerpt(line)}"
    return None
