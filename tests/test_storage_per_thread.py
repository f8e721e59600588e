"""The API's storage backends give each thread its own connection and close them all at once."""

import threading

from bess_edge.storage.per_thread import PerThread


class Conn:
    def __init__(self) -> None:
        self.closed = False


def test_each_thread_gets_its_own_connection_and_close_closes_every_one() -> None:
    made: list[Conn] = []

    def open_one() -> Conn:
        made.append(Conn())
        return made[-1]

    pool = PerThread(open_one, lambda c: setattr(c, "closed", True), lambda c: not c.closed)
    mine = pool.get()
    assert pool.get() is mine  # reused by the same thread
    theirs: list[Conn] = []
    worker = threading.Thread(target=lambda: theirs.append(pool.get()))
    worker.start()
    worker.join()
    assert theirs[0] is not mine and len(made) == 2

    mine.closed = True  # the server dropped it: the next use opens a fresh one
    assert pool.get() is not mine and len(made) == 3
    pool.close()
    assert all(c.closed for c in made)
    assert pool.get() is made[-1] and len(made) == 4  # usable again after close
