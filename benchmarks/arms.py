"""Running one benchmark arm in a child process, and surviving it.

Each arm runs in a fresh process (its own peak-memory counters, no warm state
from another arm). A failing arm must not cost the others: on a lent GPU
machine one run is all there is. So a failure is reported with the tail of
the child's output, and the caller goes on without that arm.
"""
import json
import subprocess
import sys
from typing import Any, Dict, List, Optional

#: Lines of a failed child's output to show.
TAIL = 30


def run_arm(name: str, command: List[str]) -> Optional[Dict[str, Any]]:
    """The JSON result the child prints last, or None (reported) if it failed."""
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode == 0 and lines:
        try:
            return json.loads(lines[-1])
        except ValueError:
            pass
    tail = "\n".join((done.stderr + done.stdout).strip().splitlines()[-TAIL:])
    print(f"arm {name} FAILED (exit {done.returncode}); the last lines of its output:\n{tail}",
          file=sys.stderr, flush=True)
    return None
