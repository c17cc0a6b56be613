"""The cycle collector in processes that build definitions and run jobs.

Dagster, its storage and a job's definitions make a few hundred thousand objects that live as
long as the process. The cycle collector walks them all in each full collection: twice during a
run of the example workflow (about 0.2 s), and several times more at exit while the interpreter
tears modules down (about half a second), only to hand back memory the operating system takes
back anyway. Frozen, they are passed over.
"""

import atexit
import functools
import gc


def freeze_what_lives_on() -> None:
    """Keeps every object alive now out of later collections, and out of the ones at exit.

    Call it once what a process keeps for good is built. Frozen objects freed by reference
    counting are freed as ever; only reference cycles alive now that break later stay in memory,
    so a process that calls this again and again keeps a little more each time.
    """
    gc.freeze()
    _freeze_at_exit()


@functools.cache
def _freeze_at_exit() -> None:
    # Objects made after the freeze are passed over at exit too. Objects freed by reference
    # counting are finalized as ever; only cycles still alive at exit are not, which Python
    # never promises either.
    atexit.register(gc.freeze)
