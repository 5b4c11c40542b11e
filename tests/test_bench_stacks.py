"""``bench/stacks.py``: a py-spy raw recording of ``serve all`` (``--subprocesses``) summed by
process and thread group, with the innermost frames (``--every``)."""

from bench.stacks import summarise

RAW = "\n".join([
    # parent (serve all), then a fitter child; frames outermost first, count last
    'process 10:"python -m ffhquv_cli serve all --port 1";process 11:"python -m ffhquv_cli '
    'serve fitter --device cuda";thread (101): ThreadPoolExecutor-24_3;'
    "_worker (concurrent/futures/thread.py);png_bytes (/w/ffhquv/imaging.py:41) 30",
    'process 10:"python -m ffhquv_cli serve all --port 1";process 11:"python -m ffhquv_cli '
    'serve fitter --device cuda";thread (102): ThreadPoolExecutor-7_0;'
    "_worker (concurrent/futures/thread.py);unique (/v/site-packages/numpy/lib/x.py:9) 20",
    'process 10:"python -m ffhquv_cli serve all --port 1";thread (103): MainThread;'
    "select (/usr/lib/python3.12/selectors.py:1) 50",
    "thread (104);run (/w/gateway/server.py:3) 5",  # no process frame: a single process
])


def test_processes_threads_and_innermost_frames():
    text = summarise(RAW, rate=50, top=10, every=True)
    rows = {ln.rsplit(None, 1)[0].strip(): ln.rsplit(None, 1)[1] for ln in text.splitlines()
            if ln and ln[0] not in " =" and ln.rsplit(None, 1)[-1].replace(".", "").isdigit()}
    assert rows["fitter: ThreadPoolExecutor-*"] == "1.00"  # two short-lived pools, one group
    assert rows["all: MainThread"] == "1.00" and rows["?"] == "0.10"
    procs = text.split("process                        s", 1)[1]
    assert "fitter" in procs and "1.00" in procs and "all" in procs
    fitter_self = text.split("== fitter: ThreadPoolExecutor-*: self s", 1)[1]
    assert "0.60  png_bytes (ffhquv/imaging.py)" in fitter_self
    assert "0.40  unique (numpy/lib/x.py)" in fitter_self


def test_ours_only_without_every():
    text = summarise(RAW, rate=50, top=10)
    assert "png_bytes (ffhquv/imaging.py)" in text and "unique (numpy" not in text
