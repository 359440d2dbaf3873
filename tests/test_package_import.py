"""`import kale_fast` stays cheap and leaves the user's session alone: no torch._dynamo (about 2 s) and no
matplotlib.pyplot (1.5 s, and it would switch the session's plotting backend) until they are used."""
import subprocess
import sys


def test_import_loads_neither_dynamo_nor_pyplot():
    code = "import sys, kale_fast; print(sorted(m for m in ('torch._dynamo', 'matplotlib.pyplot') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
