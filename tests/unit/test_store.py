"""The metadata store without a kernel: records, validation, the journal, the lock, the schema."""

from __future__ import annotations

import multiprocessing
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from layering import store as store_module
from layering.errors import InvalidInput, LayeringError
from layering.store import (
    SCHEMA_VERSION,
    AlreadyExists,
    Busy,
    HasChildren,
    JournalError,
    Layer,
    LayerKind,
    LayerState,
    NotFound,
    Outcome,
    PoolBacking,
    PoolRecord,
    SchemaTooNew,
    Store,
    StoreError,
    TransactionMismatch,
    new_layer_id,
)

MiB = 1024 * 1024
BASE = "b0b0b0b0b0b0"
FEDORA = "f00df00df00d"
APACHE = "a9ac4ea9ac4e"
WEB = "c0c0c0c0c0c0"


def base(thin_id: int = 0) -> Layer:
    return Layer(BASE, LayerKind.BASE, None, thin_id, 10 * MiB, created=1.0)


def image(layer_id: str, parent: str, thin_id: int, name: str | None = None) -> Layer:
    return Layer(
        layer_id, LayerKind.IMAGE, parent, thin_id, 10 * MiB, name=name, created=2.0 + thin_id
    )


def container(layer_id: str, parent: str, thin_id: int) -> Layer:
    return Layer(layer_id, LayerKind.CONTAINER, parent, thin_id, 10 * MiB, created=100.0)


def pool_record(transaction_id: int = 0) -> PoolRecord:
    return PoolRecord(
        "dmsnap-pool",
        PoolBacking.FILES,
        Path("/var/lib/dmsnap/data"),
        Path("/var/lib/dmsnap/metadata"),
        128,
        transaction_id,
    )


def one_line(err: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(err.value)
    assert "\n" not in text
    assert isinstance(err.value, LayeringError)
    return text


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "root") as opened:
        yield opened


@pytest.fixture
def chain(store: Store) -> Store:
    """base(0) -> fedora(1) -> apache(2) -> container web(3); pool at transaction id 5."""
    store.add_layer(base())
    store.add_layer(image(FEDORA, BASE, 1, "fedora"))
    store.add_layer(image(APACHE, FEDORA, 2, "apache"))
    store.add_layer(container(WEB, APACHE, 3))
    store.set_pool(pool_record(5))
    return store


# --- opening ----------------------------------------------------------------------------


def test_open_creates_root_database_in_wal_mode_at_current_version(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    with Store.open(root):
        pass
    assert (root / "metadata.db").is_file()
    assert (root / "lock").is_file()
    db = sqlite3.connect(root / "metadata.db")
    try:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION,)
    finally:
        db.close()


def test_records_survive_reopening(tmp_path: Path) -> None:
    with Store.open(tmp_path) as first:
        first.add_layer(base())
        first.set_pool(pool_record(3))
    with Store.open(tmp_path) as second:
        assert second.get(BASE) == base()
        assert second.pool() == pool_record(3)


def test_closed_store_refuses_calls(tmp_path: Path) -> None:
    opened = Store.open(tmp_path)
    opened.close()
    opened.close()
    with pytest.raises(StoreError) as err:
        opened.layers()
    assert "closed" in one_line(err)


def test_newer_schema_is_refused(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "metadata.db")
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew) as err:
        Store.open(tmp_path)
    text = one_line(err)
    assert f"schema version {SCHEMA_VERSION + 1}" in text
    assert str(tmp_path / "metadata.db") in text


def test_migration_hook_lifts_an_older_database(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with Store.open(tmp_path) as old:
        old.add_layer(base())

    def add_note(db: sqlite3.Connection) -> None:
        db.execute("ALTER TABLE layer ADD COLUMN note TEXT")

    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    monkeypatch.setitem(store_module.MIGRATIONS, SCHEMA_VERSION, add_note)
    with Store.open(tmp_path) as new:
        assert new.get(BASE) == base()
    db = sqlite3.connect(tmp_path / "metadata.db")
    try:
        assert db.execute("PRAGMA user_version").fetchone() == (SCHEMA_VERSION + 1,)
        columns = [row[1] for row in db.execute("PRAGMA table_info(layer)")]
        assert "note" in columns
    finally:
        db.close()


def test_not_a_database_is_refused(tmp_path: Path) -> None:
    (tmp_path / "metadata.db").write_bytes(b"this is not SQLite" * 100)
    with pytest.raises(StoreError) as err:
        Store.open(tmp_path)
    assert "metadata.db" in one_line(err)


# --- records ----------------------------------------------------------------------------


def test_get_by_id_and_by_name_round_trips_every_field(store: Store) -> None:
    store.add_layer(base())
    stored = Layer(
        FEDORA,
        LayerKind.IMAGE,
        BASE,
        7,
        20 * MiB,
        name="fedora",
        created=1234.5,
        mount=Path("/mnt/fedora"),
    )
    assert store.add_layer(stored) == stored
    assert store.get(FEDORA) == stored
    assert store.get("fedora") == stored
    assert store.get(FEDORA).state is LayerState.READY


def test_get_unknown_names_it(store: Store) -> None:
    with pytest.raises(NotFound) as err:
        store.get("nosuch")
    assert "'nosuch'" in one_line(err)


def test_get_refuses_an_invalid_reference(store: Store) -> None:
    with pytest.raises(InvalidInput) as err:
        store.get("../etc")
    assert "'../etc'" in one_line(err)


def test_layers_filters_by_kind_oldest_first(chain: Store) -> None:
    assert [layer.id for layer in chain.layers()] == [BASE, FEDORA, APACHE, WEB]
    assert [layer.id for layer in chain.layers(LayerKind.IMAGE)] == [FEDORA, APACHE]
    assert [layer.id for layer in chain.layers(LayerKind.CONTAINER)] == [WEB]


def test_children_and_chain(chain: Store) -> None:
    assert [layer.id for layer in chain.children(BASE)] == [FEDORA]
    assert [layer.id for layer in chain.children(APACHE)] == [WEB]
    assert chain.children(WEB) == []
    assert [layer.id for layer in chain.chain(WEB)] == [WEB, APACHE, FEDORA, BASE]
    with pytest.raises(NotFound) as err:
        chain.children("abcdefabcdef")
    assert "abcdefabcdef" in one_line(err)


def test_remove_layer(chain: Store) -> None:
    chain.remove_layer(WEB)
    with pytest.raises(NotFound):
        chain.get(WEB)
    assert chain.children(APACHE) == []


def test_remove_layer_with_children_is_refused(chain: Store) -> None:
    with pytest.raises(HasChildren) as err:
        chain.remove_layer(FEDORA)
    assert one_line(err) == f"image {FEDORA} has 1 child: {APACHE}"
    assert chain.get(FEDORA).state is LayerState.READY


def test_remove_mounted_layer_is_refused(chain: Store) -> None:
    chain.set_mount(WEB, Path("/run/web"))
    with pytest.raises(Busy) as err:
        chain.remove_layer(WEB)
    assert one_line(err) == f"container {WEB} is mounted at /run/web"


def test_remove_unknown_layer(store: Store) -> None:
    with pytest.raises(NotFound) as err:
        store.remove_layer("abcdefabcdef")
    assert "abcdefabcdef" in one_line(err)


def test_set_mount_sets_and_clears(chain: Store) -> None:
    assert chain.set_mount(WEB, Path("/run/web")).mount == Path("/run/web")
    assert chain.get(WEB).mount == Path("/run/web")
    assert chain.set_mount(WEB, None).mount is None
    assert chain.get(WEB).mount is None


def test_set_mount_refuses_relative_and_taken_paths(chain: Store) -> None:
    with pytest.raises(InvalidInput) as relative:
        chain.set_mount(WEB, Path("run/web"))
    assert "run/web" in one_line(relative)
    chain.set_mount(WEB, Path("/run/web"))
    with pytest.raises(AlreadyExists) as taken:
        chain.set_mount(APACHE, Path("/run/web"))
    assert one_line(taken) == f"mount point /run/web is taken by container {WEB}"


# --- uniqueness and validation -----------------------------------------------------------


def test_duplicate_id_is_refused(chain: Store) -> None:
    with pytest.raises(AlreadyExists) as err:
        chain.add_layer(image(FEDORA, BASE, 9))
    assert one_line(err) == f"layer {FEDORA} exists already"


def test_duplicate_name_is_refused(chain: Store) -> None:
    with pytest.raises(AlreadyExists) as err:
        chain.add_layer(image(new_layer_id(), BASE, 9, "fedora"))
    assert one_line(err) == f"name 'fedora' is taken by image {FEDORA}"


def test_duplicate_thin_id_is_refused(chain: Store) -> None:
    with pytest.raises(AlreadyExists) as err:
        chain.add_layer(image(new_layer_id(), BASE, 2))
    assert one_line(err) == f"thin id 2 is taken by image {APACHE}"
    assert len(chain.layers()) == 4


@pytest.mark.parametrize(
    "name",
    ["", "Fedora", ".hidden", "-dash", "a/b", "a b", "x" * 129, "é", "abcdefabcdef", "a" * 64],
)
def test_bad_names_are_refused_before_the_database(name: str) -> None:
    with pytest.raises(InvalidInput) as err:
        image(FEDORA, BASE, 1, name)
    assert repr(name) in one_line(err)


@pytest.mark.parametrize("name", ["fedora", "0", "apache-2.4_x", "a" * 128, "abcdefabcde"])
def test_good_names_are_accepted(store: Store, name: str) -> None:
    store.add_layer(base())
    store.add_layer(image(FEDORA, BASE, 1, name))
    assert store.get(name).id == FEDORA


@pytest.mark.parametrize(
    ("build", "words"),
    [
        (lambda: Layer("XYZ", LayerKind.BASE, None, 0, MiB), "'XYZ' is not a layer id"),
        (lambda: Layer(BASE, LayerKind.BASE, FEDORA, 0, MiB), "a base layer has no parent"),
        (lambda: Layer(FEDORA, LayerKind.IMAGE, None, 0, MiB), "a image needs a parent"),
        (
            lambda: Layer(BASE, LayerKind.BASE, None, 2**24, MiB),
            "thin id must be an integer in 0..16777215, not 16777216",
        ),
        (lambda: Layer(BASE, LayerKind.BASE, None, -1, MiB), "not -1"),
        (lambda: Layer(BASE, LayerKind.BASE, None, 0, 1000), "size 1000 bytes"),
        (lambda: Layer(BASE, LayerKind.BASE, None, 0, 0), "size in bytes must be an integer"),
        (
            lambda: Layer(BASE, LayerKind.BASE, None, 0, MiB, mount=Path("mnt")),
            "mount point PosixPath('mnt')",
        ),
    ],
)
def test_bad_layers_are_refused(build: Any, words: str) -> None:
    with pytest.raises(InvalidInput) as err:
        build()
    assert words in one_line(err)


def test_missing_parent_is_refused(store: Store) -> None:
    with pytest.raises(NotFound) as err:
        store.add_layer(image(FEDORA, BASE, 1))
    assert one_line(err) == f"parent {BASE} of layer {FEDORA} does not exist"
    assert store.layers() == []


def test_container_cannot_be_a_parent(chain: Store) -> None:
    with pytest.raises(InvalidInput) as err:
        chain.add_layer(image(new_layer_id(), WEB, 9))
    assert f"parent {WEB}" in one_line(err)
    assert "is a container" in str(err.value)


# --- thin ids and the pool ---------------------------------------------------------------


def test_next_thin_id_fills_gaps(store: Store) -> None:
    assert store.next_thin_id() == 0
    store.add_layer(base(0))
    assert store.next_thin_id() == 1
    store.add_layer(image(FEDORA, BASE, 1))
    store.add_layer(image(APACHE, BASE, 3))
    assert store.next_thin_id() == 2
    store.add_layer(image(WEB, BASE, 2))
    assert store.next_thin_id() == 4
    store.remove_layer(FEDORA)
    assert store.next_thin_id() == 1


def test_next_thin_id_when_zero_is_free(store: Store) -> None:
    store.add_layer(base(5))
    assert store.next_thin_id() == 0


def test_pool_record_round_trip(store: Store) -> None:
    assert store.pool() is None
    store.set_pool(pool_record(0))
    assert store.pool() == pool_record(0)
    store.set_pool(pool_record(42))
    assert store.pool() == pool_record(42)


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"data_block_size_sectors": 100}, "in 128..2097152, not 100"),
        ({"data_block_size_sectors": 192}, "not a multiple of 128"),
        ({"device_name": "a/b"}, "'a/b'"),
        ({"data": Path("relative")}, "pool data"),
        ({"transaction_id": -1}, "transaction id must be an integer in 0.."),
    ],
)
def test_bad_pool_records_are_refused(changes: dict[str, Any], words: str) -> None:
    fields: dict[str, Any] = {
        "device_name": "pool",
        "backing": PoolBacking.DEVICES,
        "data": Path("/dev/sdb"),
        "metadata": Path("/dev/sdc"),
        "data_block_size_sectors": 128,
        "transaction_id": 0,
    }
    with pytest.raises(InvalidInput) as err:
        PoolRecord(**(fields | changes))
    assert words in one_line(err)


# --- journal -----------------------------------------------------------------------------


def test_begin_needs_the_lock(chain: Store) -> None:
    with pytest.raises(JournalError) as err:
        chain.begin("create-container", {}, 6, add=[container(new_layer_id(), APACHE, 9)])
    assert "exclusive()" in one_line(err)
    assert len(chain.layers()) == 4


def test_begin_needs_a_pool(store: Store) -> None:
    with store.exclusive(), pytest.raises(NotFound) as err:
        store.begin("create-base", {}, 1, add=[base()])
    assert "no pool is recorded" in one_line(err)
    assert store.layers() == []


def test_begin_refuses_the_committed_transaction_id(chain: Store) -> None:
    with chain.exclusive(), pytest.raises(JournalError) as err:
        chain.begin("create-container", {}, 5)
    assert "planned transaction id 5 is the committed one" in one_line(err)


def test_begin_refuses_args_that_are_not_json(chain: Store) -> None:
    with chain.exclusive(), pytest.raises(InvalidInput) as err:
        chain.begin("create-container", {"path": Path("/x")}, 6)
    assert "args are not JSON" in one_line(err)


def test_journal_begin_step_finish(chain: Store) -> None:
    new = container(new_layer_id(), APACHE, chain.next_thin_id())
    with chain.exclusive():
        op = chain.begin("create-container", {"image": "apache"}, 6, add=[new])
        assert chain.get(new.id).state is LayerState.CREATING
        assert chain.next_thin_id() == 5
        op.step("create_snap")
        op.step("set_transaction_id")
        assert [step.name for step in op.steps] == ["create_snap", "set_transaction_id"]
        assert chain.interrupted() is None
        op.finish()
    assert op.closed
    assert chain.get(new.id) == new
    pool = chain.pool()
    assert pool is not None
    assert pool.transaction_id == 6
    assert chain.interrupted() is None


def test_journal_removal_finish_deletes_the_records(chain: Store) -> None:
    with chain.exclusive():
        op = chain.begin("remove", {"recursive": True}, 6, remove=[WEB, APACHE])
        assert chain.get(WEB).state is LayerState.REMOVING
        assert chain.get(APACHE).state is LayerState.REMOVING
        op.finish()
    assert [layer.id for layer in chain.layers()] == [BASE, FEDORA]


def test_journal_removal_refuses_a_parent_whose_children_stay(chain: Store) -> None:
    with chain.exclusive(), pytest.raises(HasChildren) as err:
        chain.begin("remove", {}, 6, remove=[APACHE])
    assert one_line(err) == f"image {APACHE} has 1 child: {WEB}"
    assert chain.get(APACHE).state is LayerState.READY
    assert chain.interrupted() is None


def test_only_one_operation_is_open(chain: Store) -> None:
    with chain.exclusive():
        op = chain.begin("remove", {}, 6, remove=[WEB])
        with pytest.raises(Busy) as err:
            chain.begin("create-container", {}, 7)
        assert f"operation remove ({op.id}) is open" in one_line(err)
        with pytest.raises(Busy):
            chain.set_pool(pool_record(9))
        with pytest.raises(Busy) as removing:
            chain.remove_layer(WEB)
        assert "part of the open operation" in one_line(removing)
        op.rollback()
    assert chain.get(WEB).state is LayerState.READY


def test_a_closed_operation_takes_no_more_steps(chain: Store) -> None:
    with chain.exclusive():
        op = chain.begin("remove", {}, 6, remove=[WEB])
        op.finish()
        with pytest.raises(JournalError) as err:
            op.step("late")
        assert "is closed" in one_line(err)
        with pytest.raises(JournalError):
            op.rollback()
    pool = chain.pool()
    assert pool is not None
    assert pool.transaction_id == 6


def test_a_block_left_by_an_exception_leaves_the_operation_interrupted(chain: Store) -> None:
    new = container(new_layer_id(), APACHE, 4)
    with chain.exclusive():
        with pytest.raises(RuntimeError), chain.begin("create-container", {}, 6, add=[new]) as op:
            op.step("create_snap")
            raise RuntimeError("kernel said no")
        found = chain.interrupted()
    assert found is not None
    assert found.id == op.id
    assert [step.name for step in found.steps] == ["create_snap"]


def _crash_during(root: Path, remove: bool) -> None:
    """Begin an operation, record two steps and die without finishing it."""
    opened = Store.open(root)
    with opened.exclusive():
        if remove:
            op = opened.begin("remove", {"layer": WEB}, 6, remove=[WEB])
        else:
            new = container("dddddddddddd", APACHE, 4)
            op = opened.begin("create-container", {"image": "apache", "n": 1}, 6, add=[new])
        op.step("create_snap")
        op.step("set_transaction_id")
        os._exit(0)


def crash(root: Path, remove: bool = False) -> None:
    process = multiprocessing.get_context("fork").Process(
        target=_crash_during, args=(root, remove)
    )
    process.start()
    process.join(30)
    assert process.exitcode == 0


def test_crash_then_complete(chain: Store) -> None:
    crash(chain.root)
    with Store.open(chain.root) as reopened, reopened.exclusive():
        op = reopened.interrupted()
        assert op is not None
        assert op.name == "create-container"
        assert op.args == {"image": "apache", "n": 1}
        assert [step.name for step in op.steps] == ["create_snap", "set_transaction_id"]
        assert (op.previous_transaction_id, op.planned_transaction_id) == (5, 6)
        assert op.added == ("dddddddddddd",)
        assert reopened.get("dddddddddddd").state is LayerState.CREATING
        assert op.outcome(6) is Outcome.APPLIED
        op.complete()
        assert reopened.interrupted() is None
        assert reopened.get("dddddddddddd").state is LayerState.READY
        pool = reopened.pool()
        assert pool is not None
        assert pool.transaction_id == 6


def test_crash_then_rollback(chain: Store) -> None:
    crash(chain.root)
    with Store.open(chain.root) as reopened, reopened.exclusive():
        op = reopened.interrupted()
        assert op is not None
        assert op.outcome(5) is Outcome.NOT_APPLIED
        op.rollback()
        assert reopened.interrupted() is None
        with pytest.raises(NotFound):
            reopened.get("dddddddddddd")
        assert reopened.next_thin_id() == 4
        pool = reopened.pool()
        assert pool is not None
        assert pool.transaction_id == 5


def test_crash_during_removal_then_rollback_restores_the_record(chain: Store) -> None:
    crash(chain.root, remove=True)
    with Store.open(chain.root) as reopened, reopened.exclusive():
        op = reopened.interrupted()
        assert op is not None
        assert op.removed == (WEB,)
        assert reopened.get(WEB).state is LayerState.REMOVING
        op.rollback()
        assert reopened.get(WEB).state is LayerState.READY


def test_outcome_refuses_an_unrelated_transaction_id(chain: Store) -> None:
    crash(chain.root)
    with Store.open(chain.root) as reopened, reopened.exclusive():
        op = reopened.interrupted()
        assert op is not None
        with pytest.raises(TransactionMismatch) as err:
            op.outcome(9)
        assert "is 9, neither the planned 6 nor the previous 5" in one_line(err)
        assert reopened.interrupted() is not None


# --- locking -----------------------------------------------------------------------------


def _allocate(root: str, index: int, barrier: Any, locked: bool, results: Any) -> None:
    """Read next_thin_id, dawdle, then add a layer with it: a read-modify-write."""
    with Store.open(Path(root)) as opened:
        barrier.wait(30)
        try:
            if locked:
                with opened.exclusive():
                    thin_id = opened.next_thin_id()
                    time.sleep(0.05)
                    opened.add_layer(container(f"{index:012x}", BASE, thin_id))
            else:
                thin_id = opened.next_thin_id()
                time.sleep(0.3)
                opened.add_layer(container(f"{index:012x}", BASE, thin_id))
        except AlreadyExists:
            results.put((index, None))
        else:
            results.put((index, thin_id))


def run_allocators(root: Path, locked: bool) -> list[int | None]:
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(8)
    results = context.Queue()
    processes = [
        context.Process(target=_allocate, args=(str(root), i, barrier, locked, results))
        for i in range(8)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=60) for _ in processes)
    for process in processes:
        process.join(30)
        assert process.exitcode == 0
    return [outcomes[i] for i in range(8)]


def test_eight_processes_allocate_distinct_thin_ids_under_the_lock(store: Store) -> None:
    store.add_layer(base(0))
    thin_ids = run_allocators(store.root, locked=True)
    assert sorted(thin_id for thin_id in thin_ids if thin_id is not None) == list(range(1, 9))
    assert sorted(layer.thin_id for layer in store.layers()) == list(range(9))


def test_without_the_lock_the_same_processes_collide(store: Store) -> None:
    """The control for the test above: its race is real."""
    store.add_layer(base(0))
    thin_ids = run_allocators(store.root, locked=False)
    assert None in thin_ids
    assert len(store.layers()) < 9


def _hold_lock(root: str, held: Any, release: Any) -> None:
    with Store.open(Path(root)) as opened, opened.exclusive():
        held.set()
        release.wait(30)


def test_exclusive_is_reentrant_and_excludes_other_processes(store: Store) -> None:
    with store.exclusive(), store.exclusive():
        assert store.holds_lock()
        with Store.open(store.root) as other, other.exclusive(timeout=0):
            assert other.holds_lock()
    assert not store.holds_lock()

    context = multiprocessing.get_context("fork")
    held, release = context.Event(), context.Event()
    holder = context.Process(target=_hold_lock, args=(str(store.root), held, release))
    holder.start()
    try:
        assert held.wait(30)
        with pytest.raises(Busy) as err, store.exclusive(timeout=0.1):
            pass
        assert f"held by process {holder.pid}" in one_line(err)
    finally:
        release.set()
        holder.join(30)
    with store.exclusive(timeout=5):
        assert store.holds_lock()
