"""Two ~5 MB texts besides Shakespeare for tuning the `quick` preset on more than one corpus.

    python bench/quick_texts.py          # prints the two files it wrote (kept in /tmp/gpt2-llm-bench/quick)

python.txt: the Python source of transformers' models, files in sorted order, whole, until 5 MB.
docs.txt:   the plain-text files under /usr/share/doc (READMEs, copyright notices, changelogs), likewise.
Both are real text already on the machine, so every user of this bench gets the same bytes from the same packages.
"""
import glob
import os
import site
import sys

OUT = "/tmp/gpt2-llm-bench/quick"
TARGET_BYTES = 5_000_000


def gather(paths, target=TARGET_BYTES) -> str:
    parts, size = [], 0
    for path in sorted(paths):
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        data = open(path, "rb").read()
        if b"\0" in data:
            continue
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        parts.append(text)
        size += len(data)
        if size >= target:
            break
    return "\n\n".join(parts)


def main():
    os.makedirs(OUT, exist_ok=True)
    packages = site.getsitepackages()[0]
    texts = {
        "python.txt": glob.glob(f"{packages}/transformers/models/**/*.py", recursive=True),
        "docs.txt": glob.glob("/usr/share/doc/**/*", recursive=True),
    }
    for name, paths in texts.items():
        path = os.path.join(OUT, name)
        with open(path, "w", encoding="utf-8") as f:
            f.write(gather(paths))
        print(path, os.path.getsize(path), file=sys.stdout)


if __name__ == "__main__":
    main()
