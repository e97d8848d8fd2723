"""`ember chat` in a real terminal (tmux, 100 columns): prompts, newlines, Ctrl-C, history, Ctrl-D.

    .venv/bin/python -m pytest tests/cli/test_chat_terminal.py -q

Needs tmux (Debian: apt-get install -y tmux); skipped with that message when it is absent. The test types
into the pane with `tmux send-keys` and reads the screen with `capture-pane`, as a person would see it.
"""

import os
import shlex
import shutil
import subprocess
import sys
import time
import uuid

import pytest

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None,
                                reason="tmux is not installed (apt-get install -y tmux)")


class Pane:
    def __init__(self, command: str):
        self.sock = f"ember-test-{uuid.uuid4().hex[:8]}"  # our own tmux server: nobody else's sessions
        self.tmux("-f", "/dev/null", "new-session", "-d", "-s", "chat", "-x", "100", "-y", "50", command)

    def tmux(self, *args) -> str:
        return subprocess.run(["tmux", "-L", self.sock, *args], capture_output=True, text=True, check=True).stdout

    def lines(self) -> list[str]:
        out = self.tmux("capture-pane", "-p", "-J", "-S", "-200", "-t", "chat")
        return [ln.rstrip() for ln in out.rstrip("\n").splitlines()]

    def screen(self) -> str:
        return "\n".join(self.lines())

    def send(self, *keys) -> None:
        self.tmux("send-keys", "-t", "chat", *keys)

    def wait(self, cond, what: str, timeout: float = 300) -> list[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            lines = [ln for ln in self.lines() if ln]
            if cond(lines):
                return lines
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}; the screen:\n{self.screen()}")

    def close(self) -> None:
        subprocess.run(["tmux", "-L", self.sock, "kill-server"], capture_output=True, check=False)


def _at_prompt(lines: list[str]) -> bool:
    return bool(lines) and lines[-1] == ">"  # the pane shows "> " (trailing space stripped) on its own line


def test_two_turns_ctrl_c_history_and_ctrl_d(smollm2_dir, tmp_path, ember_bin):
    env = {"EMBER_HOME": str(tmp_path / "home"), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.environ.get("PYTHONPATH", ""), "TERM": "xterm"}
    cmd = " ".join([*(f"{k}={shlex.quote(v)}" for k, v in env.items()), shlex.quote(ember_bin), "chat",
                    shlex.quote(str(smollm2_dir)), "--temperature", "0", "--max-tokens", "200"])
    pane = Pane(f"env {cmd}; echo EXITED $?; sleep 600")
    try:
        pane.wait(_at_prompt, "the first prompt (model loaded)", timeout=600)

        pane.send("What is the capital of France?", "Enter")
        lines = pane.wait(lambda ls: _at_prompt(ls) and "> What is the capital of France?" in ls,
                          "the first answer and a fresh prompt")
        q = lines.index("> What is the capital of France?")
        answer = lines[q + 1:-1]
        assert answer and "Paris" in " ".join(answer), pane.screen()
        assert not lines[-2].startswith(">"), "the answer is followed by the prompt on its own line"

        pane.send("And of Italy?", "Enter")
        lines = pane.wait(lambda ls: _at_prompt(ls) and "> And of Italy?" in ls, "the second answer")
        q = lines.index("> And of Italy?")
        assert lines[q + 1:-1] and "Rome" in " ".join(lines[q + 1:-1]), pane.screen()

        # Ctrl-C during a long answer stops that answer, not the program.
        pane.send("Write a long story about a dragon who learns to cook.", "Enter")
        story = "> Write a long story about a dragon who learns to cook."
        pane.wait(lambda ls: story in ls and len(" ".join(ls[ls.index(story) + 1:])) > 40,
                  "the story to start streaming")
        pane.send("C-c")
        lines = pane.wait(lambda ls: _at_prompt(ls) and "[stopped]" in " ".join(ls), "the prompt after Ctrl-C",
                          timeout=30)
        assert "EXITED" not in pane.screen()

        # Arrow up recalls the last line (readline history); Ctrl-U clears it; Ctrl-D quits.
        pane.send("Up")
        pane.wait(lambda ls: ls[-1] == story, "the history recall")
        pane.send("C-u")
        pane.wait(_at_prompt, "the cleared line")
        pane.send("C-d")
        pane.wait(lambda ls: "EXITED 0" in ls, "exit 0 after Ctrl-D", timeout=60)
    finally:
        print(pane.screen(), file=sys.stderr)
        pane.close()
