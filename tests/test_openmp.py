"""Heavy torch work runs in a thread that ends with it, taking its OpenMP worker pool along."""

from __future__ import annotations

import os
import signal
import threading
import time

import pytest

from agentdistill.openmp import in_a_thread_of_its_own, in_passing_thread


def _threads() -> set[str]:
    """The process's OS threads (OpenMP's workers included), by id."""
    return set(os.listdir("/proc/self/task"))


def test_the_result_and_the_error_come_back_from_a_thread_that_has_ended():
    ran_in = []
    assert in_passing_thread(lambda a, b=0: ran_in.append(threading.current_thread()) or a + b, 2, b=3) == 5
    assert ran_in[0] is not threading.current_thread() and not ran_in[0].is_alive()
    with pytest.raises(ValueError, match="bad spec"):
        in_passing_thread(lambda: (_ for _ in ()).throw(ValueError("bad spec")))

    @in_a_thread_of_its_own
    def train(steps: int, lr: float = 0.1) -> tuple:
        return threading.current_thread(), steps * lr

    ran_on, result = train(3, lr=0.5)
    assert train.__name__ == "train" and result == 1.5 and ran_on is not threading.current_thread()


def test_torch_work_leaves_no_openmp_pool_behind():
    torch = pytest.importorskip("torch")
    if torch.get_num_threads() < 2 or not os.path.isdir("/proc/self/task"):
        pytest.skip("needs torch with 2+ threads and Linux's /proc to count threads")

    def matmuls() -> set[str]:
        x = torch.randn(400, 400)
        for _ in range(3):
            x = x @ x
        return _threads()

    # a thread of its own first: the pool this process may already have (from other tests) stays as it is;
    # other threads (earlier tests' batchers) may end meanwhile, so only the work's new threads are followed
    before = _threads()
    started = in_passing_thread(matmuls) - before
    deadline = time.monotonic() + 5
    while _threads() & started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(started) >= 2  # the work's thread and its OpenMP workers
    assert not _threads() & started  # all gone with it


@pytest.mark.skipif(threading.current_thread() is not threading.main_thread(), reason="signals reach the main thread")
def test_ctrl_c_stops_the_work_inside_its_thread_and_reaches_the_caller():
    seen = []

    def training():
        try:
            while True:  # a trainer's steps: Python between the kernels
                time.sleep(0.01)
        except KeyboardInterrupt:
            seen.append("stopped inside")
            raise

    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        in_passing_thread(training)
    assert seen == ["stopped inside"] and time.monotonic() - t0 < 5


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_starts_its_own_generation_thread():
    """A child forked after generation started has no such thread: it must start one, not wait forever."""
    from agentdistill.openmp import on_the_generation_thread

    on_the_generation_thread(threading.current_thread)  # the thread is up in the parent
    pid = os.fork()
    if pid == 0:  # the child: exits 0 only if its call is answered, by a thread of its own
        code = 1
        try:
            box = []
            t = threading.Thread(target=lambda: box.append(on_the_generation_thread(threading.current_thread)),
                                 daemon=True)
            t.start()
            t.join(10)
            code = 0 if box and box[0].name == "agentdistill-generate" else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
