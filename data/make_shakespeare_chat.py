"""Write shakespeare_chat.jsonl: conversations about the plays in shakespeare.txt, for chat fine-tuning.

    python data/make_shakespeare_chat.py        # rewrites data/shakespeare_chat.jsonl (the same bytes every time)

Every answer comes from the text itself (public domain, see README.md), so a model can learn it: who speaks a
line, what a character replies, what comes next, and short multi-turn exchanges, some under a system message.
Written for this project; OpenAI's chat fine-tuning format, one conversation per line.
"""
import json
import random
import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROMAN = re.compile(r"[IVX]+")
TITLE = re.compile(r"[A-Z][A-Z ,'-]*$")  # the capitals a title line ends with
SPEAKER = re.compile(r"^([A-Z][A-Z' ]{1,30})\.$")  # "LAFEU." or "FIRST LORD."
MAX_SPEECH = 220  # characters: short speeches make short answers
KEEP = 2000  # conversations shipped (about 0.6 MB)
SYSTEMS = ["You know Shakespeare's plays by heart.", "Answer in the words of the plays.",
           "You are a prompter at the Globe: give the exact lines."]


def speeches(text: str):
    """(play, speaker, speech) in order; a speech is the lines after 'SPEAKER.' up to a blank line."""
    lines, play, found = text.split("\n"), None, []
    for i, line in enumerate(lines):
        if i + 2 < len(lines) and lines[i + 2].strip() == "by William Shakespeare":
            # The plays were joined without a newline: a title may follow the last play's "THE END" or "[Exeunt.]"
            title = TITLE.search(line.strip())[0].removeprefix("THE END")
            play = " ".join(word if ROMAN.fullmatch(word.strip(",")) else word.capitalize()
                            for word in title.split())  # "All's Well That Ends Well", "King Henry IV, ..."
        match = SPEAKER.match(line.strip())
        if match and play and i + 1 < len(lines) and lines[i + 1].strip():
            body = []
            for following in lines[i + 1:]:
                if not following.strip():
                    break
                body.append(following.strip())
            speech = " ".join(body)
            if not speech.startswith("[") and len(speech) <= MAX_SPEECH:
                found.append((play, match[1].title(), speech))
    return found


def conversations(found, rng: random.Random):
    """Conversations over consecutive speeches of the same play."""
    for (play, who, said), (play2, who2, reply) in zip(found, found[1:]):
        if play != play2 or who == who2:
            continue
        kind = rng.randrange(4)
        if kind == 0:
            messages = [("user", f'Who says this in {play}: "{reply}"'), ("assistant", f"{who2}.")]
        elif kind == 1:
            messages = [("user", f'In {play}, {who} says: "{said}" What does {who2} answer?'), ("assistant", reply)]
        elif kind == 2:
            messages = [("user", f'Reply as {who2} would in {play}: "{said}"'), ("assistant", reply)]
        else:
            messages = [("user", f'Who says this in {play}: "{said}"'), ("assistant", f"{who}."),
                        ("user", "And what is the answer to it?"), ("assistant", f"{who2}: {reply}")]
        if rng.random() < 0.25:
            messages.insert(0, ("system", rng.choice(SYSTEMS)))
        yield {"messages": [{"role": role, "content": content} for role, content in messages]}


def make(text: str) -> str:
    """The file's text: KEEP conversations drawn from text's speeches, the same every time."""
    rng = random.Random(0)
    records = list(conversations(speeches(text), rng))
    keep = sorted(rng.sample(range(len(records)), min(KEEP, len(records))))  # spread over every play, in order
    return "".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in keep)


def main():
    lines = make((HERE / "shakespeare.txt").read_text(encoding="utf-8"))
    (HERE / "shakespeare_chat.jsonl").write_text(lines, encoding="utf-8")
    print(f"wrote {lines.count(chr(10))} conversations to {HERE / 'shakespeare_chat.jsonl'}")


if __name__ == "__main__":
    main()
