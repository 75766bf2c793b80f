"""download_file and the shard downloader against a real HTTP server on 127.0.0.1, with injected faults."""
import multiprocessing as mp, socket, time
from pathlib import Path
import pyarrow as pa, pyarrow.parquet as pq
import pytest

from nanochat_nb.download import DownloadError, download_file, sha256_file
from nanochat_nb.dataset import ShardError, check_shard, download_shards, open_shard, shard_name, split_files


def _payload(srv, name="data.bin", size=300_000):
    data = bytes(range(256)) * (size // 256)
    (srv.root / name).write_bytes(data)
    return data


def _leftovers(d: Path):
    return sorted(p.name for p in d.iterdir() if not p.name.startswith("."))


def test_download_succeeds(http_server, tmp_path):
    data = _payload(http_server)
    out = download_file(f"{http_server.url}/data.bin", tmp_path / "out" / "data.bin", sha256=None)
    assert out.read_bytes() == data
    assert http_server.requests == ["data.bin"]
    # a second call finds the file and does not ask the server again
    download_file(f"{http_server.url}/data.bin", out)
    assert http_server.requests == ["data.bin"]


def test_server_failing_twice_is_retried(http_server, tmp_path):
    data = _payload(http_server)
    http_server.faults["data.bin"] = [503, 500]
    t0 = time.time()
    out = download_file(f"{http_server.url}/data.bin", tmp_path / "data.bin", retries=4, backoff=0.05)
    assert out.read_bytes() == data
    assert http_server.requests == ["data.bin"] * 3
    assert time.time() - t0 >= 0.05 + 0.1  # waited backoff * 2^attempt between tries


def test_cut_transfer_leaves_no_partial_file(http_server, tmp_path):
    _payload(http_server)
    http_server.faults["data.bin"] = ["cut"] * 3
    dest = tmp_path / "dl" / "data.bin"
    with pytest.raises(DownloadError, match="data.bin"):
        download_file(f"{http_server.url}/data.bin", dest, retries=3, backoff=0.01)
    assert http_server.requests == ["data.bin"] * 3
    assert _leftovers(dest.parent) == []  # neither the real name nor a temp file


def test_cut_once_then_complete(http_server, tmp_path):
    data = _payload(http_server)
    http_server.faults["data.bin"] = ["cut"]
    out = download_file(f"{http_server.url}/data.bin", tmp_path / "data.bin", retries=3, backoff=0.01)
    assert out.read_bytes() == data and len(http_server.requests) == 2


def test_unreachable_host_gives_offline_error(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/shard_00000.parquet"
    with pytest.raises(DownloadError) as e:
        download_file(url, tmp_path / "shard_00000.parquet", retries=2, backoff=0.01)
    msg = str(e.value)
    assert url in msg and "offline" in msg and str(tmp_path / "shard_00000.parquet") in msg
    assert _leftovers(tmp_path) == []


def test_404_is_not_retried(http_server, tmp_path):
    with pytest.raises(DownloadError, match="1 attempt"):
        download_file(f"{http_server.url}/missing.bin", tmp_path / "m.bin", retries=5, backoff=1.0)
    assert http_server.requests == ["missing.bin"]


def test_sha256_checked(http_server, tmp_path):
    data = _payload(http_server)
    good = sha256_file(http_server.root / "data.bin")
    assert download_file(f"{http_server.url}/data.bin", tmp_path / "a.bin", sha256=good).read_bytes() == data
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        download_file(f"{http_server.url}/data.bin", tmp_path / "b.bin", sha256="f" * 64)
    assert not (tmp_path / "b.bin").exists()
    # a present file with the wrong hash is replaced
    (tmp_path / "c.bin").write_bytes(b"stale")
    assert download_file(f"{http_server.url}/data.bin", tmp_path / "c.bin", sha256=good).read_bytes() == data


def _worker(url, dest, q):
    try: q.put(str(download_file(url, dest, retries=2, backoff=0.01)))
    except Exception as e: q.put(repr(e))


def test_lock_lets_one_process_download(http_server, tmp_path):
    _payload(http_server, size=2_000_000)
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    dest = tmp_path / "shared.bin"
    procs = [ctx.Process(target=_worker, args=(f"{http_server.url}/data.bin", str(dest), q)) for _ in range(4)]
    for p in procs: p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs: p.join(timeout=60)
    assert results == [str(dest)] * 4
    assert http_server.requests == ["data.bin"]  # one download, three processes found it done


def test_corrupt_and_columnless_parquet_named(http_server, tmp_path):
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 but then nonsense")
    with pytest.raises(ShardError, match="corrupt.parquet is not a readable parquet shard"):
        open_shard(tmp_path / "corrupt.parquet")
    pq.write_table(pa.table({"body": ["x"]}), tmp_path / "nocol.parquet")
    with pytest.raises(ShardError, match=r"nocol.parquet has no 'text' column \(its columns: \['body'\]\)"):
        check_shard(tmp_path / "nocol.parquet")
    # a corrupt shard on the server is rejected before it gets its name
    (http_server.root / shard_name(0)).write_bytes(b"<html>rate limited</html>")
    with pytest.raises(DownloadError, match="contents were rejected"):
        download_file(f"{http_server.url}/{shard_name(0)}", tmp_path / "dl" / shard_name(0), check=check_shard)
    assert _leftovers(tmp_path / "dl") == []


def test_download_shards_end_to_end(http_server, tmp_path):
    for i in [0, 1, 6542]:
        pq.write_table(pa.table({"text": [f"doc {i}.{j}" for j in range(50)]}), http_server.root / shard_name(i))
    http_server.faults[shard_name(1)] = [503]
    paths = download_shards(2, num_workers=2, data_dir=tmp_path / "data", base_url=http_server.url, backoff=0.01)
    assert [p.name for p in paths] == [shard_name(0), shard_name(1), shard_name(6542)]
    assert split_files("val", tmp_path / "data") == [tmp_path / "data" / shard_name(6542)]
