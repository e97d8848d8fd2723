"""Fine-tuning jobs over HTTP with the official openai client, on a real `ember serve` with its job worker.

A tiny random Llama (SmolLM2's tokenizer and chat template) stands in for a real base so that each job trains
in seconds: the checks are about the job machinery (files, states, events, checkpoints, cancel, serving the
result), not about what the model learns (tests/finetune covers that).
"""

import json
import time

import httpx
import openai
import pytest
from job_helpers import finished, group_alive, wait_for, write_chat

pytestmark = pytest.mark.timeout(900)


@pytest.fixture(scope="module")
def jobs_home(tmp_path_factory, tiny_chat_dir, minilm_dir):
    from ember.config import Settings
    from ember.store import importers, registry

    home = tmp_path_factory.mktemp("jobs-home")
    registry.register_folder(tiny_chat_dir, "tiny", settings=Settings(home=home))
    importers.import_path(minilm_dir, "minilm-l6-v2", settings=Settings(home=home))
    return home


@pytest.fixture(scope="module")
def admin_key(jobs_home):
    """/api needs an admin key even on a server with no other key (server/auth.py)."""
    from ember.config import Settings
    from ember.store import keys

    return keys.create("jobs-admin", "admin", Settings(home=jobs_home))[1]


@pytest.fixture(scope="module")
def served(start_server, jobs_home):
    return start_server(jobs_home, "--model", "tiny", "--max-slots", 8)


@pytest.fixture(scope="module")
def client(served, admin_key):
    return openai.OpenAI(base_url=served.v1, api_key=admin_key, max_retries=0)


def test_fine_tune_with_the_openai_client_then_chat_with_the_result(client, tmp_path):
    f = client.files.create(file=write_chat(tmp_path / "train.jsonl"), purpose="fine-tune")
    assert f.purpose == "fine-tune" and f.bytes > 0 and client.files.retrieve(f.id).filename == "train.jsonl"
    assert f.id in [x.id for x in client.files.list()]
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id, suffix="say",
                                         hyperparameters={"n_epochs": 1, "batch_size": 4},
                                         extra_body={"ember": {"max_steps": 4, "checkpoint_every": 2,
                                                               "max_length": 64}})
    assert job.status in ("queued", "running") and job.fine_tuned_model is None
    job = wait_for(lambda: finished(client, job.id), 300, "the job to finish")
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("tiny-ft-say:")
    assert job.id in [j.id for j in client.fine_tuning.jobs.list()]

    events = client.fine_tuning.jobs.list_events(job.id, limit=100).data
    metrics = [e for e in events if e.type == "metrics"]
    assert sorted(e.data["step"] for e in metrics) == [1, 2, 3, 4]
    assert all(isinstance(e.data["train_loss"], float) for e in metrics)
    ckpts = client.fine_tuning.jobs.checkpoints.list(job.id).data
    assert sorted(c.step_number for c in ckpts) == [2, 4] and ckpts[0].metrics.train_loss is not None

    reply = client.chat.completions.create(model=job.fine_tuned_model, max_tokens=3, temperature=0,
                                           messages=[{"role": "user", "content": "Say 3."}])
    assert reply.choices[0].message.content is not None and reply.usage.completion_tokens >= 1


def test_bad_file_refused_at_upload_with_line_numbers(client, tmp_path):
    with pytest.raises(openai.BadRequestError) as e:
        client.files.create(file=write_chat(tmp_path / "bad.jsonl", bad_lines=(3, 6)),
                            purpose="fine-tune")
    msg = e.value.body["message"] if isinstance(e.value.body, dict) else str(e.value)
    assert "bad.jsonl:3" in msg and "bad.jsonl:6" in msg
    with pytest.raises(openai.BadRequestError) as e:
        client.fine_tuning.jobs.create(model="tiny", training_file="file-doesnotexist")
    assert "file-doesnotexist" in str(e.value)
    with pytest.raises(openai.BadRequestError):
        client.fine_tuning.jobs.create(model="no-such-model", training_file="file-doesnotexist")
    labelled = tmp_path / "labelled.jsonl"
    labelled.write_text('{"text": "good", "label": "pos"}\n{"text": "bad", "label": "neg"}\n')
    f = client.files.create(file=labelled, purpose="fine-tune")
    with pytest.raises(openai.BadRequestError) as e:  # classification data for a chat fine-tune
        client.fine_tuning.jobs.create(model="tiny", training_file=f.id)
    assert "classify" in str(e.value)


def test_cancel_during_training_kills_the_process_group(client, served, admin_key, tmp_path):
    f = client.files.create(file=write_chat(tmp_path / "train.jsonl"), purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="tiny", training_file=f.id,
                                         extra_body={"ember": {"max_steps": 100000, "max_length": 64}})
    wait_for(lambda: any(e.type == "metrics" for e in client.fine_tuning.jobs.list_events(job.id).data), 300,
             "training steps")
    pid = httpx.get(f"{served.url}/api/jobs/{job.id}", headers={"Authorization": f"Bearer {admin_key}"}).json()["pid"]
    assert pid and group_alive(pid)
    t0 = time.monotonic()
    client.fine_tuning.jobs.cancel(job.id)
    wait_for(lambda: client.fine_tuning.jobs.retrieve(job.id).status == "cancelled", 10, "cancelled")
    assert time.monotonic() - t0 < 10
    wait_for(lambda: not group_alive(pid), 5, "the job's processes to be gone")


def test_classification_job_through_method_type(client, tmp_path):
    path = tmp_path / "labelled.jsonl"
    path.write_text("".join(json.dumps({"text": f"{w} day number {i}", "label": lab}) + "\n"
                            for i in range(8) for w, lab in (("great", "pos"), ("awful", "neg"))))
    f = client.files.create(file=path, purpose="fine-tune")
    job = client.fine_tuning.jobs.create(model="minilm-l6-v2", training_file=f.id, method={"type": "classification"},
                                         hyperparameters={"batch_size": 4},
                                         extra_body={"ember": {"max_steps": 2, "max_length": 32}})
    job = wait_for(lambda: finished(client, job.id), 300, "the classification job")
    assert job.status == "succeeded", job.error
    assert job.fine_tuned_model.startswith("minilm-l6-v2-ft-") and job.method.type == "classification"
