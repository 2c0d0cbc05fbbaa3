"""The prompt formats shared by training, evaluation and the memory component.

The base LM is warmed up on exactly these formats, so every path that asks it something must use
them: MAC puts only the question in the prompt; the RAG baseline writes documents before it.
"""

from __future__ import annotations

from collections.abc import Sequence


def format_question(question: str) -> str:
    """``Question: ...\\nAnswer:`` — what the LM sees under a modulation (no document text)."""
    return f"Question: {question.strip()}\nAnswer:"


def format_qa(question: str, answer: str | None = None) -> str:
    """The question prompt, followed by `` answer`` when one is given (a training example)."""
    prompt = format_question(question)
    return prompt if answer is None else f"{prompt} {answer.strip()}"


def format_with_documents(documents: Sequence[str], question: str) -> str:
    """Documents written into the prompt before the question (the RAG baseline)."""
    context = "\n\n".join(d.strip() for d in documents)
    return f"{context}\n\n{format_question(question)}"


def clean_answer(text: str) -> str:
    """The first line of a generation, stripped: the answer format ends at the line break."""
    return text.strip().split("\n", 1)[0].strip()


def format_chat(history: Sequence[tuple[str, str]], question: str) -> str:
    """Earlier chat turns as ``User: ...`` / ``Assistant: ...`` lines, then the question prompt.

    The question keeps the ``Question: ...\\nAnswer:`` format the base LM was warmed up on, so an empty
    history gives exactly :func:`format_question`. Roles other than user/assistant are not rendered.
    """
    names = {"user": "User", "assistant": "Assistant"}
    lines = [f"{names[role]}: {content.strip()}" for role, content in history if role in names]
    prompt = format_question(question)
    return "\n".join(lines) + "\n\n" + prompt if lines else prompt
