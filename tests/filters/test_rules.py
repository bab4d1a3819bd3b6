"""Table tests per rule (datatrove style): a crafted row -> the reason the rule gives (None: kept)."""

from __future__ import annotations

import pytest

from diffmix.filters.change import Change
from diffmix.filters.commit import (
    Bot,
    English,
    HashOnly,
    License,
    Merge,
    Message,
    Revert,
    Trivial,
    VersionBump,
)
from diffmix.filters.decontam import Decontaminate, git_blob_ids
from diffmix.filters.files import Content, FileSize, Generated, Language
from diffmix.filters.secrets import Secrets
from tests.filters.conftest import AFTER, BEFORE, verdict

LONG_LINE = "x = '" + "a" * 1200 + "'\n"
MINIFIED = "var a=1;" * 40 + "\n"
# 12 functions 10 lines apart: one edit in each is 12 hunks.
SPREAD = "".join(f"def step_{i}():\n" + "".join(f"    value_{i}_{j} = {j}\n" for j in range(8)) + "    pass\n" for i in range(12))


@pytest.mark.parametrize(
    ("rule", "fields", "expected"),
    [
        # license: permissive SPDX ids, case-insensitive; copyleft, unknown and missing dropped
        (License(), {"license": "MIT"}, None),
        (License(), {"license": "apache-2.0"}, None),
        (License(), {"license": "BSD-3-Clause"}, None),
        (License(), {"license": "GPL-3.0"}, "license_not_allowed"),
        (License(), {"license": "unknown"}, "license_not_allowed"),
        (License(), {"license": None}, "license_not_allowed"),
        (License(), {"license": "mpl-2.0"}, "license_not_allowed"),
        (License(allow=["mit", "mpl-2.0"]), {"license": "MPL-2.0"}, None),
        (License(allow=None), {"license": "GPL-3.0"}, None),
        # merge subjects
        (Merge(), {"message": "Merge pull request #12 from ada/cache"}, "merge_commit"),
        (Merge(), {"message": "Merge branch 'main' into feature"}, "merge_commit"),
        (Merge(), {"message": "Merge remote-tracking branch 'origin/main'"}, "merge_commit"),
        (Merge(), {"message": "Merge from develop (#2482)"}, "merge_commit"),
        (Merge(), {"message": "Merge of  maxcountryman"}, "merge_commit"),
        (Merge(), {"message": "Merge sort: handle empty inputs"}, None),
        (Merge(), {"message": "Merge overlapping ranges"}, None),
        # bots, by author name
        (Bot(), {"author_name": "dependabot[bot]"}, "bot_author"),
        (Bot(), {"author_name": "renovate-bot"}, "bot_author"),
        (Bot(), {"author_name": "github-actions"}, "bot_author"),
        (Bot(), {"author_name": "Release Bot"}, "bot_author"),
        (Bot(), {"author_name": "Ada Talbot"}, None),
        (Bot(), {"author_name": None}, None),
        (Bot(names=["^ci-"]), {"author_name": "ci-runner"}, "bot_author"),
        (Bot(), {"message": "[pre-commit.ci lite] apply automatic fixes"}, "bot_author"),
        (Bot(subjects=[]), {"message": "[pre-commit.ci lite] apply automatic fixes"}, None),
        # reverts and cherry-picks
        (Revert(), {"message": 'Revert "Cache the third handler"\n\nThis reverts commit ' + "b" * 40 + "."}, "revert_commit"),
        (Revert(), {"message": "Cache the third handler\n\n(cherry picked from commit " + "c" * 40 + ")"}, "cherry_pick"),
        (Revert(cherry_pick=False), {"message": "Cache the third handler\n\n(cherry picked from commit " + "c" * 40 + ")"}, None),
        (Revert(), {"message": "Revert the cache size to its old default"}, None),
        (Revert(), {"message": "Undo the cache\n\nThis reverts commit " + "b" * 40 + ".\n\nIt broke the build."}, "revert_commit"),
        # a squashed pull request with a revert among its commits is a change of its own
        (Revert(), {"message": "Test coverage (#1433)\n\n* add tests\n\n* Revert \"x\"\n\nThis reverts commit " + "b" * 40 + "."}, None),
        # trivial subjects: exact after case / punctuation folding, and CommitChronicle prefixes
        (Trivial(), {"message": "Update README.md"}, "trivial_message"),
        (Trivial(), {"message": "WIP"}, "trivial_message"),
        (Trivial(), {"message": "fix typo."}, "trivial_message"),
        (Trivial(), {"message": "Initial commit"}, "trivial_message"),
        (Trivial(), {"message": "Add files via upload"}, "trivial_message"),
        (Trivial(), {"message": "Updated changelog for 2.1"}, "trivial_message"),
        (Trivial(), {"message": "Fix typo in the cache docstring"}, None),
        # version bumps: every one dropped at keep_fraction 0, kept at 1
        (VersionBump(keep_fraction=0.0), {"message": "Bump version to 2.3.1"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Bump mocha from 5.2.0 to 6.0.0"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Release 8.1.0"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "v8.1.0"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Update version number for the next release"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Prepare 3.0 release"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Update urllib3 to v1.21.1"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Update docs to match the new API"}, None),
        # wordings found on the dev data (click, commander.js, requests)
        (VersionBump(keep_fraction=0.0), {"message": "release version 8.1.1"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Version Bump v0.2.2"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "This is 5.0-dev"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Ready for 2.4"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "Update to urllib3 1.14"}, "version_bump"),
        (VersionBump(keep_fraction=0.0), {"message": "This is the fix for 2.4 users"}, None),
        (VersionBump(keep_fraction=0.0), {"message": "Ready for review: the new parser"}, None),
        (VersionBump(keep_fraction=1.0), {"message": "Bump version to 2.3.1"}, None),
        (VersionBump(keep_fraction=None), {"message": "Bump version to 2.3.1"}, None),
        (VersionBump(keep_fraction=0.0), {"message": "Support Python 3.12.1 in the parser"}, None),
        # hash-only subjects (an English word of hex letters is not a hash)
        (HashOnly(), {"message": "3f9a2c1"}, "hash_only_message"),
        (HashOnly(), {"message": "3f9a2c1d-77ab"}, "hash_only_message"),
        (HashOnly(), {"message": "deadbeef"}, None),
        (HashOnly(), {"message": "add"}, None),
        # message length
        (Message(), {"message": "Fix it now"}, "subject_too_short"),
        (Message(), {"message": "Refactoring"}, "subject_too_few_words"),
        (Message(), {"message": "Handle timeouts"}, "subject_too_few_words"),
        (Message(), {"message": "Handle request timeouts"}, None),
        (Message(), {"message": "Handle request timeouts\n\n" + "details " * 130}, "message_too_long"),
        (Message(max_message_chars=None), {"message": "Handle request timeouts\n\n" + "details " * 130}, None),
        (Message(min_subject_words=None), {"message": "Handle timeouts"}, None),
        # English (off by default; CommitChronicle's ASCII-only rule when on)
        (English(), {"message": "修复缓存处理程序的问题"}, None),
        (English(min_ascii_fraction=1.0), {"message": "修复缓存处理程序的问题"}, "non_english_message"),
        (English(min_ascii_fraction=1.0), {"message": "Handle request timeouts"}, None),
        # language by extension
        (Language(), {"lang": "Python"}, None),
        (Language(), {"lang": "Other"}, "language_not_allowed"),
        (Language(allow=["Python"]), {"lang": "Markdown"}, "language_not_allowed"),
        # generated, vendored, lock
        (Generated(), {"path": "vendor/github.com/x/y.go"}, "vendored_path"),
        (Generated(), {"path": "web/node_modules/left-pad/index.js"}, "vendored_path"),
        (Generated(), {"path": "third_party/zlib/inflate.c"}, "vendored_path"),
        (Generated(), {"path": "package-lock.json"}, "lock_file"),
        (Generated(), {"path": "rust/Cargo.lock"}, "lock_file"),
        (Generated(), {"path": "go.sum"}, "lock_file"),
        (Generated(), {"path": "static/app.min.js"}, "generated_path"),
        (Generated(), {"path": "static/app.js.map"}, "generated_path"),
        (Generated(), {"path": "proto/user_pb2.py"}, "generated_path"),
        (Generated(), {"path": "api/user.pb.go"}, "generated_path"),
        (Generated(), {"old_contents": "// Code generated by protoc-gen-go. DO NOT EDIT.\n" + BEFORE, "new_contents": "// Code generated by protoc-gen-go. DO NOT EDIT.\n" + AFTER}, "generated_header"),
        (Generated(), {"old_contents": "# @generated by tool\n" + BEFORE, "new_contents": "# @generated by tool\n" + AFTER}, "generated_header"),
        (Generated(), {"old_contents": BEFORE + "# do not edit below\n" * 0, "new_contents": AFTER}, None),
        (Generated(), {"path": "src/vendored_helpers.py"}, None),
        (Generated(vendored_dirs=None), {"path": "vendor/a.py"}, None),
        # minified / data-like (BigCode)
        (Content(), {"old_contents": BEFORE + LONG_LINE, "new_contents": AFTER + LONG_LINE}, "long_line"),
        (Content(), {"old_contents": MINIFIED * 3, "new_contents": MINIFIED * 3 + "var b=2;\n"}, "long_mean_line"),
        (Content(), {"old_contents": "{}[]()<>\n" * 40, "new_contents": "{}[]()<>\n" * 41}, "low_alnum"),
        (Content(), {"old_contents": '<?xml version="1.0"?>\n<a>\n</a>\n', "new_contents": '<?xml version="1.0"?>\n<a>1</a>\n'}, "xml_file"),
        (Content(), {"lang": "JSON", "old_contents": '{"name": "app"}\n', "new_contents": '{"name": "api"}\n'}, "data_file_size"),
        (Content(), {"lang": "JSON", "old_contents": '{"name": "app", "version": "1.0.0", "private": true}\n', "new_contents": '{"name": "app", "version": "1.0.1", "private": true}\n'}, None),
        (Content(), {"lang": "YAML", "old_contents": "key: value\n" * 600, "new_contents": "key: value\n" * 601}, "data_file_size"),
        (Content(max_line=None), {"old_contents": BEFORE + LONG_LINE, "new_contents": AFTER + LONG_LINE}, None),
        (Content(), {}, None),
        # old file size
        (FileSize(), {"old_contents": BEFORE * 200, "new_contents": AFTER + BEFORE * 199}, "old_file_too_large"),
        (FileSize(max_old_chars=None), {"old_contents": BEFORE * 200, "new_contents": AFTER + BEFORE * 199}, None),
        (FileSize(), {}, None),
        # the change
        (Change(), {"new_contents": BEFORE + "\n\n"}, "blank_change"),
        (Change(), {"new_contents": "".join(f"line {i}\n" for i in range(150)), "old_contents": "".join(f"row {i}\n" for i in range(150))}, "too_many_changed_lines"),
        (Change(), {"old_contents": SPREAD, "new_contents": SPREAD.replace("pass", "return None")}, "too_many_hunks"),
        (Change(), {"new_contents": BEFORE.replace("respond", "reply")}, "near_rewrite"),
        (Change(), {"new_contents": BEFORE + BEFORE.replace("handler_", "view_")}, None),
        (Change(), {"change_type": "A", "old_contents": "", "new_contents": AFTER}, None),
        (Change(max_hunks=None), {"old_contents": SPREAD, "new_contents": SPREAD.replace("pass", "return None")}, None),
        (Change(max_deleted_fraction=None), {"new_contents": BEFORE.replace("respond", "reply")}, None),
        # a small file: any real edit deletes half of it (a pinned requirement, a short module)
        (Change(), {"old_contents": "furo>=2024.8\n", "new_contents": "furo==2024.8.6\n"}, None),
        (Change(rewrite_min_old_chars=None), {"old_contents": "furo>=2024.8\n", "new_contents": "furo==2024.8.6\n"}, "near_rewrite"),
        (Change(rewrite_min_old_chars=1000), {"new_contents": BEFORE.replace("respond", "reply")}, None),
        (Change(), {"new_contents": BEFORE.replace("    return respond(request, 3)", "\treturn respond(request, 3)")}, None),
        (Change(), {}, None),
        # each bound is inclusive: the default edit changes 2 lines in 1 hunk
        (Change(max_changed_lines=2), {}, None),
        (Change(max_changed_lines=1), {}, "too_many_changed_lines"),
        (Change(max_hunks=1), {}, None),
        (Change(max_hunks=0), {}, "too_many_hunks"),
        (Change(rewrite_min_old_chars=len(BEFORE)), {"new_contents": BEFORE.replace("respond", "reply")}, "near_rewrite"),
        (Change(rewrite_min_old_chars=len(BEFORE) + 1), {"new_contents": BEFORE.replace("respond", "reply")}, None),
        # a secret on a changed line (the flag comes from redaction)
        (Secrets(), {"f_secret_in_change": True}, "secret_in_change"),
        (Secrets(drop_secret_in_change=False), {"f_secret_in_change": True}, None),
        (Secrets(), {}, None),
        # decontamination (built from split.exclude)
        (Decontaminate(repos=["ACME/App"]), {}, "decontaminated"),
        (Decontaminate(commits=["aaaaaaa"]), {}, "decontaminated"),
        (Decontaminate(commits=["bbbbbbb"]), {}, None),
        (Decontaminate(files=[git_blob_ids(__import__("polars").Series([BEFORE]))[0]]), {}, "decontaminated"),
        (Decontaminate(), {}, None),
    ],
)
def test_rule_reason(rule, fields, expected) -> None:
    assert verdict(rule, **fields) == expected


def test_blob_ids_match_git(git_repo) -> None:
    """`files:` entries are what `git hash-object` prints."""
    import polars as pl

    from tests.conftest import git

    (git_repo / "f.py").write_text(BEFORE)
    assert git_blob_ids(pl.Series([BEFORE]))[0] == git(git_repo, "hash-object", "f.py").strip()


def test_blob_ids_are_of_the_committed_texts() -> None:
    """Files are named by their ids as committed: the scores hash the texts before redaction."""
    import polars as pl

    committed = ["a = 1\n", "key = 'AKIA0123456789ABCDEF'\n", None]
    redacted = ["a = 1\n", "key = '<SECRET>'\n", None]
    new = ["a = 2\n", "key = None\n", "b\n"]
    frame = pl.DataFrame({"old_original": committed, "old_contents": redacted, "new_original": new, "new_contents": new})
    scores = Decontaminate().scores(frame)
    assert scores["f_old_blob"].to_list() == [*git_blob_ids(pl.Series(committed[:2])).to_list(), None]
    assert scores["f_new_blob"].to_list() == git_blob_ids(pl.Series(new)).to_list()
    assert scores["f_old_blob"][1] != git_blob_ids(pl.Series(redacted[1:2]))[0]


def test_whitespace_only_score() -> None:
    from tests.filters.conftest import row, scored

    frame = scored(
        [
            row(new_contents=BEFORE.replace("    return respond(request, 3)", "        return respond(request, 3)")),
            row(new_contents=BEFORE.replace("respond(request, 3)", "respond(request,3)")),
            row(),
        ]
    )
    assert frame["f_whitespace_only"].to_list() == [True, True, False]
