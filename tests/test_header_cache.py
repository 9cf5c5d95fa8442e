"""The header cache: parsed revision headers reused only for the very same file contents."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from monorepo import Monorepo

from ncm_migrate import discovery
from ncm_migrate.discovery import HeaderCache, read_revisions
from ncm_migrate.errors import RevisionFileError
from ncm_migrate.loader import load_project
from ncm_migrate.project import HEADER_CACHE


def _two_revisions(repo: Monorepo, tmp_path: Path) -> Path:
    repo.table("users", "0001_initial", "users_t", requires=())
    repo.table("users", "0002_more", "users_more", down="0001_initial", doc="More users.")
    repo.urls({"users": f"sqlite:///{tmp_path / 'users.db'}"})
    return repo.root / "services" / "users" / "migrations"


def _no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(service: str, path: Path, text: str) -> None:
        raise AssertionError(f"{path} was parsed although the cache holds it")

    monkeypatch.setattr(discovery, "parse_revision", refuse)


def test_a_warm_cache_serves_the_same_headers_without_parsing(
    repo: Monorepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _two_revisions(repo, tmp_path)
    cold = load_project(repo.root)
    assert (repo.root / HEADER_CACHE).is_file()
    _no_parsing(monkeypatch)
    warm = load_project(repo.root)
    assert warm.revisions == cold.revisions
    assert warm.revisions["users"]["0002_more"].doc == "More users."


def test_an_edit_that_keeps_size_and_mtime_is_never_served_stale(
    repo: Monorepo, tmp_path: Path
) -> None:
    folder = _two_revisions(repo, tmp_path)
    load_project(repo.root)
    path = folder / "0002_more.py"
    before = path.stat()
    text = path.read_text()
    edited = text.replace("More users.", "Less users.")
    assert len(edited) == len(text)
    path.write_text(edited)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size and path.stat().st_mtime_ns == before.st_mtime_ns
    assert load_project(repo.root).revisions["users"]["0002_more"].doc == "Less users."


def test_a_broken_edit_is_reported_even_though_the_cache_knew_the_file(
    repo: Monorepo, tmp_path: Path
) -> None:
    folder = _two_revisions(repo, tmp_path)
    load_project(repo.root)
    (folder / "0002_more.py").write_text("revision = '0002_more'\ndef upgrade(:\n")
    with pytest.raises(RevisionFileError, match="syntax error"):
        load_project(repo.root).select(["users"])


@pytest.mark.parametrize(
    "content",
    ["{not json", json.dumps({"format": "another version", "folders": {}}), json.dumps([1, 2])],
)
def test_a_corrupt_or_foreign_cache_file_is_ignored_and_replaced(
    repo: Monorepo, tmp_path: Path, content: str
) -> None:
    _two_revisions(repo, tmp_path)
    expected = load_project(repo.root).revisions
    cache_file = repo.root / HEADER_CACHE
    cache_file.write_text(content)
    assert load_project(repo.root).revisions == expected
    assert json.loads(cache_file.read_text())["format"] != "another version"


def test_a_tampered_entry_for_the_same_contents_is_not_trusted_blindly(
    repo: Monorepo, tmp_path: Path
) -> None:
    _two_revisions(repo, tmp_path)
    expected = load_project(repo.root).revisions
    cache_file = repo.root / HEADER_CACHE
    data = json.loads(cache_file.read_text())
    for folder, text in data["folders"].items():
        rows = json.loads(text)
        for row in rows.values():
            row[2] = "not a list"
        data["folders"][folder] = json.dumps(rows)
    cache_file.write_text(json.dumps(data))
    assert load_project(repo.root).revisions == expected


def test_files_that_are_gone_leave_the_cache(repo: Monorepo, tmp_path: Path) -> None:
    folder = _two_revisions(repo, tmp_path)
    load_project(repo.root)
    (folder / "0002_more.py").unlink()
    assert set(load_project(repo.root).revisions["users"]) == {"0001_initial"}
    folders = json.loads((repo.root / HEADER_CACHE).read_text())["folders"]
    assert {folder: list(json.loads(rows)) for folder, rows in folders.items()} == {
        str(folder): ["0001_initial.py"]
    }


def test_a_cache_that_cannot_be_written_only_costs_time(repo: Monorepo, tmp_path: Path) -> None:
    _two_revisions(repo, tmp_path)
    (repo.root / "var").mkdir()
    (repo.root / "var" / "cache").write_text("a file where the cache folder would be")
    project = load_project(repo.root)
    assert set(project.revisions["users"]) == {"0001_initial", "0002_more"}


def test_read_revisions_with_and_without_a_cache_agree(repo: Monorepo, tmp_path: Path) -> None:
    folder = _two_revisions(repo, tmp_path)
    cache = HeaderCache(tmp_path / "headers.json")
    first = read_revisions("users", folder, cache)
    cache.save([folder])
    again = read_revisions("users", folder, HeaderCache(tmp_path / "headers.json"))
    assert first == again == read_revisions("users", folder)


def test_a_large_file_is_read_whole(repo: Monorepo, tmp_path: Path) -> None:
    folder = _two_revisions(repo, tmp_path)
    path = folder / "0002_more.py"
    path.write_text(path.read_text() + "\nPADDING = '''" + "x" * 200_000 + "'''\n")
    cold = load_project(repo.root).revisions
    warm = load_project(repo.root).revisions
    assert cold == warm
    assert warm["users"]["0002_more"].checksum == discovery.checksum_text(path.read_text())


def test_a_header_read_by_importing_is_cached_by_contents(
    repo: Monorepo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = _two_revisions(repo, tmp_path)
    path = folder / "0002_more.py"
    path.write_text(path.read_text().replace("down_revision = '0001_initial'",
                                             "down_revision = '0001' + '_initial'"))
    cold = load_project(repo.root).revisions
    assert cold["users"]["0002_more"].down_revisions == ("0001_initial",)

    def refuse(path: Path, name: str) -> None:
        raise AssertionError(f"{path} was imported although the cache holds its header")

    monkeypatch.setattr(discovery, "import_file", refuse)
    assert load_project(repo.root).revisions == cold
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(RevisionFileError, match="was imported"):  # read again, by importing
        load_project(repo.root).select(["users"])
