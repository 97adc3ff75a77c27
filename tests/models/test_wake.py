"""Wake-ups on SQLite: a datagram to a socket beside the database file."""

import os
import stat
import threading

import pytest

from ftctl.models import Store


@pytest.mark.parametrize("deep", [False, True])
def test_a_write_wakes_the_listener_beside_the_database_even_on_a_long_path(tmp_path, deep):
    folder = tmp_path / ("d" * 60) / ("e" * 60) if deep else tmp_path  # past AF_UNIX's 108 bytes
    folder.mkdir(parents=True, exist_ok=True)
    store = Store(f"sqlite:///{folder / 'ftctl.db'}")
    os.chmod(folder / "ftctl.db", 0o660)
    assert store.wake("nobody listens") is False
    (folder / "ftctl.db.wake").write_bytes(b"")  # a non-socket in its place is left alone...
    with pytest.raises(OSError):
        store.wake_listener(lambda reason: None)
    (folder / "ftctl.db.wake").unlink()
    got, woke = [], threading.Event()
    listener = store.wake_listener(lambda reason: (got.append(reason), woke.set()))
    try:
        sock = folder / "ftctl.db.wake"
        assert stat.S_ISSOCK(os.lstat(sock).st_mode)
        assert stat.S_IMODE(os.lstat(sock).st_mode) == 0o660  # whoever may write the database may wake
        other = Store(f"sqlite:///{folder / 'ftctl.db'}")  # another process's store, e.g. the CLI's
        assert other.wake("submit") is True
        assert woke.wait(5) and got == ["submit"]
        other.close()
    finally:
        listener.close()
    assert not (folder / "ftctl.db.wake").exists()
    store.close()


def test_a_socket_left_by_a_killed_daemon_is_replaced(tmp_path):
    import socket

    store = Store(f"sqlite:///{tmp_path / 'ftctl.db'}")
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    stale.bind(str(tmp_path / "ftctl.db.wake"))
    stale.close()  # the file stays, nobody behind it
    assert store.wake("x") is False
    got = threading.Event()
    listener = store.wake_listener(lambda reason: got.set())
    try:
        assert store.wake("x") and got.wait(5)
    finally:
        listener.close()
        store.close()
