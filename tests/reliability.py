"""The reliability matrix (case, expected behaviour, tested by), generated from the tests' lists.

    python -m tests.reliability > tests/RELIABILITY.md

The bad-input rows come from `BAD_CASES` in tests/test_sources.py; the other rows name the
test functions that check them, and tests/test_reliability_matrix.py fails if a named test
disappears or the committed file is stale.
"""
from __future__ import annotations

from sftcli import markdown_table

from tests.test_sources import BAD_CASES

SKIP = "with `--skip-bad`: skipped, counted as `{reason}` in the manifest, {good} good record(s) written"
FILE_LEVEL = "a file-level problem: `--skip-bad` cannot get past it"

# (case, expected behaviour, "module::test")
OTHER_CASES = [
    ("UTF-8 BOM (.json, .jsonl, .csv), CRLF line endings, extra unknown fields", "accepted and read as intended",
     "tests/test_reliability_input.py::test_legitimate_oddities_are_accepted"),
    ("literal `<|im_start|>` / `<|im_end|>` in the text", "tokenized as plain text: no forged turn",
     "tests/test_reliability_input.py::test_literal_control_strings_cannot_forge_a_turn"),
    ("a record of 100k characters", "truncated to max-length (or dropped / refused with --overlong)",
     "tests/test_reliability_input.py::test_very_long_record_is_truncated_not_fatal"),
    ("prep killed with SIGKILL at several points", "the previous complete shard set or none; a rerun succeeds",
     "tests/test_reliability_prep.py::test_sigkill_at_any_moment_leaves_previous_set_or_none"),
    ("a failing prep over an existing shard set", "the previous shard set is left untouched",
     "tests/test_prep.py::test_a_failed_run_leaves_the_previous_shard_set"),
    ("too little free disk space", "refused before writing, with the sizes", "tests/test_reliability_prep.py::test_refuses_when_the_disk_is_too_small"),
    ("a truncated shard file", "train refuses before the first step, naming the rebuild command",
     "tests/test_train_shards.py::test_truncated_file"),
    ("a flipped byte in a shard file (`--verify`)", "train refuses: sha256 differs", "tests/test_train_shards.py::test_flipped_byte_with_verify"),
    ("a missing shard file", "train refuses", "tests/test_train_shards.py::test_missing_file"),
    ("a manifest of another format version", "train refuses", "tests/test_train_shards.py::test_manifest_of_another_format_version"),
    ("tokenizer files not matching the manifest's fingerprint", "train refuses",
     "tests/test_train_shards.py::test_tokenizer_fingerprint_mismatch"),
    ("a token id at or above the model's vocabulary", "train refuses", "tests/test_train_shards.py::test_token_id_outside_the_model_vocabulary"),
    ("train killed with SIGKILL between checkpoints", "`--resume` continues from the last complete checkpoint with equal losses",
     "tests/test_train_loop.py::test_sigkill_between_checkpoints_then_resume"),
    ("a kill during a checkpoint save", "never a half `last/`: temp name + rename, repaired on start",
     "tests/test_train_loop.py::test_atomic_folder_survives_a_kill_between_its_renames"),
    ("inf/NaN gradients", "the step is skipped, counted and logged", "tests/test_train_loop.py::test_overflowing_gradients_are_skipped_counted_and_logged"),
    ("NaN loss for more than --max-nan-steps steps", "the run stops with a clear error; best/ and last/ intact",
     "tests/test_train_loop.py::test_nan_loss_stops_the_run_and_keeps_checkpoints"),
    ("a skipped update (inf/NaN gradients)", "the learning-rate schedule does not advance",
     "tests/test_train_step.py::test_a_skipped_update_does_not_move_the_schedule"),
    ("updates skipped for more than --max-nan-steps steps in a row", "the run stops with a clear error",
     "tests/test_train_step.py::test_consecutive_skipped_updates_stop_the_run"),
    ("SIGTERM, SIGINT or SIGUSR1 during a step, an evaluation or a checkpoint save",
     "the step finishes, `last/` is saved, `summary.json` says `stopped`, exit 143 / 130 / 0; `--resume` gives "
     "the uninterrupted run's losses exactly", "tests/test_reliability_train.py::test_a_stop_signal_saves_last_and_resume_is_exact"),
    ("SIGTERM to a `python -m train` process", "exit 143, one line saying how to resume; `--resume` exact",
     "tests/test_reliability_train.py::test_sigterm_ends_a_train_process_with_143_and_resume_is_exact"),
    ("SIGTERM to torchrun (2 processes, gloo)", "every process stops after the same step and saves; `--resume` exact",
     "tests/test_train_ddp.py::test_sigterm_under_torchrun_stops_every_rank_at_one_step_and_resume_is_exact"),
    ("`--fsdp` processes that built different models (another folder on one node)", "refused with one line "
     "before any weight moves", "tests/test_train_fsdp.py::test_fsdp_refusals_are_one_line_each"),
    ("a DCP `last/` (`--fsdp`) resumed without `--fsdp`", "refused with one line naming the command with `--fsdp`",
     "tests/test_train_fsdp.py::test_one_process_fsdp_keeps_the_dcp_format_and_refuses_a_broken_one"),
    ("a second Ctrl-C during a checkpoint save", "stops at once, exit 130, one line; the previous `last/` byte-identical",
     "tests/test_reliability_train.py::test_a_second_ctrl_c_stops_at_once_and_keeps_the_previous_last"),
    ("train killed before its first checkpoint, then `--resume`",
     "trains from step 0 in that folder once its config.json matches, saying so in one line",
     "tests/test_reliability_train.py::test_resume_before_the_first_checkpoint_trains_from_step_0"),
    ("a run folder that holds a run, or `--resume` with other options", "refused with one line naming the command that "
     "continues the run", "tests/test_train_loop.py::test_a_run_folder_is_not_reused_by_accident"),
    ("two `prep` commands on one `--out`", "the second stops at once naming the first's pid and host; the first "
     "finishes undisturbed", "tests/test_reliability_prep.py::test_a_second_prep_on_one_out_stops_at_once"),
    ("a second `train` (new or `--resume`) on a run folder in use", "stops at once naming the holder's pid and host",
     "tests/test_reliability_train.py::test_a_second_train_on_a_run_folder_stops_at_once"),
    ("a lock file left by a killed process", "taken over: the kernel released its flock",
     "tests/test_reliability_train.py::test_a_lock_left_by_a_killed_process_is_taken_over"),
    ("a full disk at prep's tokenizer save, shard writes or manifest", "one `error:` line with the space needed; "
     "the previous shard set byte-identical, no staging folder left",
     "tests/test_reliability_prep.py::test_a_full_disk_during_prep_is_one_line_and_keeps_the_previous_set"),
    ("prep on a 3 MiB file system (a real tmpfs)", "refused before writing, with the sizes (the tokenizer counted)",
     "tests/test_reliability_prep.py::test_prep_on_a_3_mib_file_system_is_refused_with_the_sizes"),
    ("a full disk at train's `best/`, `last/`, `metrics.jsonl`, `tb/` or `summary.json`",
     "the run stops at that step with one `error:` line naming the folder and the command that continues it; "
     "the checkpoints saved before byte-identical", "tests/test_reliability_train.py::test_a_full_disk_stops_the_run_with_one_line"),
    ("a real full disk (a tmpfs) at a checkpoint save", "one `error:` line naming `best/` and the space needed; "
     "`best/` and `last/` byte-identical, no staging folder left",
     "tests/test_reliability_disk.py::test_a_real_full_disk_at_a_checkpoint_save_is_one_line_and_keeps_the_checkpoints"),
    ("`--attention flex` or `flash` where it cannot train (CPU)", "refused with one line saying why, nothing written",
     "tests/test_train_attention.py::test_paths_that_cannot_train_on_cpu_say_so_in_one_line"),
]


def rows() -> list[tuple[str, str, str]]:
    out = []
    for case in BAD_CASES:
        expected = (f"stops: non-zero exit, one message naming the file, {', '.join(case.expect)}; no shard set; "
                    + (FILE_LEVEL if case.good is None else SKIP.format(reason=case.reason, good=case.good)))
        out.append((f"`tests/data/bad/{case.file}`", expected,
                    "tests/test_reliability_input.py::test_bad_case_stops_with_a_clear_error_and_no_shard_set"))
    return out + OTHER_CASES


def markdown() -> str:
    cell = lambda text: text.replace("|", "\\|")  # noqa: E731  (a pipe would end the table cell)
    table = markdown_table(["case", "expected behaviour", "tested by"],
                           [[cell(case), cell(expected), f"`{test}`"] for case, expected, test in rows()])
    return ("# Reliability matrix\n\nGenerated by `python -m tests.reliability > tests/RELIABILITY.md`; do not edit "
            "by hand.\n\n" + table + "\n")


if __name__ == "__main__":
    print(markdown(), end="")
