"""Action parsing copes with the sloppy output of small models."""

import pytest

from agentdistill.agents.parsing import parse_action

ADMISSIBLE = ["open door to outside", "go to outside", "focus on crocodile", "look around", "pick up thermometer"]


@pytest.mark.parametrize(
    "raw, expected",
    [
        ("Thought: I should leave.\nAction: open door to outside", "open door to outside"),
        ("action: `go to outside`.", "go to outside"),
        ("**Action:** \"focus on crocodile\"", "focus on crocodile"),
        ("```\nlook around\n```", "look around"),
        ("1. pick up thermometer", "pick up thermometer"),
        ("Thought: first look\nAction: look\nAction: look around", "look around"),
        ("Action: Open the door to outside", "open door to outside"),  # snapped to the admissible form
        ("Observation: a room\nlook around please", "look around"),
    ],
)
def test_sloppy_outputs_snap_to_admissible(raw, expected):
    assert parse_action(raw, ADMISSIBLE).action == expected


def test_without_admissible_list_action_is_cleaned_not_invented():
    p = parse_action("Thought: go\nAction:  `teleport to kitchen`. ")
    assert (p.action, p.thought, p.matched) == ("teleport to kitchen", "go", False)


def test_nothing_usable():
    assert parse_action("Thought: hmm\n", ADMISSIBLE).action == ""
    assert parse_action("", ADMISSIBLE).action == ""


def test_unrelated_text_is_not_forced_onto_an_action():
    assert parse_action("Action: eat the moon", ADMISSIBLE).action == "eat the moon"


def test_majority_ignores_unparsable_samples_but_counts_them_against_agreement():
    from agentdistill.agents.parsing import majority

    assert majority(["go to kitchen", "", "go to kitchen", "look around"]) == (0, 0.5)
    assert majority(["", "look around", ""]) == (1, 1 / 3)
    assert majority(["", ""]) == (0, 0.0)


def test_bracketed_action_forms_keep_their_brackets():
    """WebShop-style actions carry their argument in brackets; a fully wrapped action is unwrapped."""
    assert parse_action("Action: search[red cotton t-shirt]", None).action == "search[red cotton t-shirt]"
    assert parse_action("Action: `click[Next >]`.", None).action == "click[Next >]"
    assert parse_action("Action: [look around]", None).action == "look around"


def test_snapping_never_changes_the_verb():
    """`go to kitchen` once became `focus on kitchen`, ScienceWorld's irreversible answer action."""
    admissible = ["focus on kitchen", "open door to kitchen", "look around", "focus on red wire"]
    p = parse_action("Action: go to kitchen", admissible)
    assert (p.action, p.matched) == ("go to kitchen", False)  # sent as written: the env rejects it
    assert parse_action("Action: focus on red wir", admissible).action == "focus on red wire"
    assert parse_action("Action: open door to kitchn", admissible).action == "open door to kitchen"
