"""A spec moved between provider kinds: its hyperparameters mapped to what
the new descriptor knows (said in one line), and a model's known end date."""

from datetime import date

from ftctl.providers.moves import map_hyperparameters, stops_answering
from ftctl.providers.registry import kind


def test_hyperparameters_are_kept_renamed_or_dropped_by_what_the_new_descriptor_knows():
    openai, sim, together = kind("openai"), kind("simulated"), kind("together")
    got, line = map_hyperparameters(openai, sim, {"n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 2.0})
    assert got == {"epochs": 3}
    assert line == ("hyperparameters openai -> simulated: kept none; renamed n_epochs -> epochs; dropped batch_size "
                    "(not known to simulated), learning_rate_multiplier (not known to simulated)")
    # a value the new kind does not take ("auto": OpenAI picks) is dropped, saying why
    got, line = map_hyperparameters(openai, sim, {"epochs": "auto"})
    assert got == {} and line.endswith('dropped epochs ("auto" is not a number above 0 on simulated)')
    got, line = map_hyperparameters(sim, together, {"epochs": 2, "warmup_fraction": 0.1, "training_steps": 10})
    assert got == {"epochs": 2, "warmup_ratio": 0.1}
    assert line == ("hyperparameters simulated -> together: kept epochs; renamed warmup_fraction -> warmup_ratio; "
                    "dropped training_steps (not known to together)")
    # what the new kind checks is checked: every value kept is one it takes
    assert sim.bad_hyperparameter(map_hyperparameters(openai, sim, {"n_epochs": 3})[0]) is None


def test_a_models_end_date_is_read_from_the_descriptors_ends_by_its_root_model():
    class Closing:
        kind = "closing"
        ends = {"gpt-4.1-nano": {"date": "2026-10-23", "source": "the deprecations page"}}

        def base_model(self, model):
            return kind("openai").base_model(model)

    assert stops_answering(Closing(), "ft:gpt-4.1-nano:acme:support:abc") == (date(2026, 10, 23),
                                                                                "the deprecations page")
    assert stops_answering(Closing(), "gpt-4o-mini") == (None, None)
    assert stops_answering(kind("simulated"), "open-mistral-7b") == (None, None)  # no `ends`: no known end date
