"""A model's scheduler config is checked before compute (issue 32): each
numerically impossible value is named with its file and key; the schedules
this project supports pass."""

from __future__ import annotations

import pytest

from diffusion_transfer.core.models.scheduler_config import scheduler_config_problems

FILE = "data/06_models/x/scheduler/scheduler_config.json"


@pytest.mark.parametrize("config", [
    {},  # diffusers' defaults: DDPM's linear 1e-4..0.02, T=1000
    {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "num_train_timesteps": 1000},
    {"beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012, "prediction_type": "v_prediction"},
    {"beta_schedule": "squaredcos_cap_v2", "prediction_type": "sample", "beta_end": 1.5},  # cosine ignores the ends
    {"beta_schedule": "cosine", "num_train_timesteps": 2},
    {"beta_schedule": "linear", "num_train_timesteps": 2, "beta_start": 0.1, "beta_end": 0.3},
])
def test_supported_schedules_pass(config):
    assert scheduler_config_problems(config, FILE) == []


@pytest.mark.parametrize("config, key, says", [
    ({"beta_end": 1.5}, "beta_end", "a beta must lie strictly between 0 and 1"),
    ({"beta_schedule": "scaled_linear", "beta_end": 1.0}, "beta_end", "strictly between 0 and 1"),
    ({"beta_start": 0.0}, "beta_start", "strictly between 0 and 1"),
    ({"beta_start": -0.1}, "beta_start", "strictly between 0 and 1"),
    ({"beta_end": "0.02"}, "beta_end", "strictly between 0 and 1"),
    ({"num_train_timesteps": 1}, "num_train_timesteps", "at least 2 steps"),
    ({"num_train_timesteps": 0}, "num_train_timesteps", "at least 2 steps"),
    ({"num_train_timesteps": 10.5}, "num_train_timesteps", "an integer"),
    ({"beta_start": 0.02, "beta_end": 0.0001}, "beta_start", "is not below beta_end in"),
    ({"beta_start": 1e-20, "beta_end": 1e-19}, "beta_start", "too small for abar_t to decrease"),
    ({"prediction_type": "x0"}, "prediction_type", "supported: epsilon, v_prediction, sample"),
    ({"beta_schedule": "sigmoid"}, "beta_schedule", "supported: linear, scaled_linear, squaredcos_cap_v2"),
])
def test_each_impossible_value_names_the_file_and_the_key(config, key, says):
    problems = scheduler_config_problems(config, FILE)
    assert len(problems) == 1, problems
    assert f"{key} in {FILE}" in problems[0] and says in problems[0]


def test_an_override_is_checked_with_the_config_it_overrides():
    """schedule.beta_end below the model's beta_start: each value is in range, the pair is not."""
    problems = scheduler_config_problems({"beta_start": 0.05}, FILE, {"beta_end": 0.01, "beta_start": None})
    assert len(problems) == 1
    assert f"beta_start in {FILE} (0.05) is not below schedule.beta_end (0.01)" in problems[0]
    # an override can mend a bad value of the folder
    assert scheduler_config_problems({"num_train_timesteps": 1}, FILE, {"num_train_timesteps": 1000}) == []
    assert "schedule.num_train_timesteps is 1" in scheduler_config_problems({}, FILE, {"num_train_timesteps": 1})[0]


def test_every_problem_of_one_config_is_listed():
    problems = scheduler_config_problems({"num_train_timesteps": 1, "beta_end": 1.5, "prediction_type": "x"}, FILE)
    assert len(problems) == 3
