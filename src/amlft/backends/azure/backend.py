"""The Azure ML backend: every lifecycle step on the real azure-ai-ml SDK.

Importing this module is cheap: azure.ai.ml loads inside the methods that use it.
Each step reads the run record first and does only what is missing, so any step can
be re-run or resumed from another process (`submit` in one GitHub Actions job, `wait`
in the next). With `--rehearse` the same code talks to amlft's in-process fake.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

from amlft.backends.azure import endpoints, names, pipeline, skus
from amlft.backends.azure.job_status import is_terminal
from amlft.backends.azure.service import call, enum_text
from amlft.backends.base import EndpointInfo, StepContext
from amlft.errors import JobCanceled, JobFailed, PreflightError, RecordError, ServiceError
from amlft.extras import needs_extra
from amlft.hashing import file_sha256

JOB_KIND = "azureml.job"
MODEL_KIND = "azureml.model"
DATA_KIND = "azureml.data"


def _session(ctx: StepContext) -> Any:
    from amlft.backends.azure.session import open_session

    return open_session(ctx)


def _dataset_name(ctx: StepContext) -> str:
    return names.dataset_slug(ctx.profile.data.source)


class AzureBackend:
    name = "azure"

    # ------------------------------------------------------------------ auth
    def auth(self, ctx: StepContext) -> dict[str, Any]:
        from amlft.backends.azure.auth import identity_of

        sess = _session(ctx)
        who = "rehearsal identity" if ctx.rehearse else identity_of(sess.credential)
        ws = call(f"Reading workspace {sess.workspace_name}", sess.ws.workspaces.get, sess.workspace_name,
                  hint="Check the workspace coordinates (`amlft auth` says where each came from).")
        out = {"identity": who, "credential": sess.credential_desc, "subscription_id": sess.subscription_id,
               "resource_group": sess.resource_group, "workspace": sess.workspace_name,
               "location": getattr(ws, "location", None), "registry": sess.registry_name,
               "sources": sess.sources or {}}
        ctx.console.info(f"signed in as {who} via {sess.credential_desc}")
        ctx.console.info(f"workspace {sess.workspace_name} (resource group {sess.resource_group}, "
                         f"{out['location']}); registry {sess.registry_name}")
        ctx.record.set_output("auth", **out)
        return out

    # ------------------------------------------------------------------ check
    def check(self, ctx: StepContext) -> list[dict[str, Any]]:
        from amlft.backends.azure import preflight

        sess = _session(ctx)
        prof = ctx.profile
        found, facts = preflight.run_checks(sess, prof, run_id=ctx.record.run_id)
        found = preflight.merge_infra(found, self._infra_findings(sess, ctx))
        cost = skus.cost_summary(cluster_sku=facts.cluster_sku or prof.compute.instance_type,
                                 num_nodes=prof.compute.num_nodes, endpoint_sku=prof.endpoint.instance_type,
                                 instance_count=prof.endpoint.instance_count, overrides=prof.prices)
        ctx.console.info(f"cost: {cost['summary']}")
        params = facts.parameters
        ctx.record.set_output(
            "check", cost=cost, cluster_sku=facts.cluster_sku, gpus_per_node=facts.gpus_per_node,
            model_asset_id=facts.model_asset_id,
            model_version=str(getattr(facts.model, "version", "")) or None,
            component_version=str(getattr(facts.component, "version", "")) or None,
            parameters=params.values if params else {}, parameter_sources=params.sources if params else {},
            dropped_parameters=params.dropped if params else [], endpoint_name=facts.endpoint_name)
        return found

    @staticmethod
    def _infra_findings(sess: Any, ctx: StepContext) -> list[dict[str, Any]]:
        from amlft.backends.azure.infra_check import check_workspace_against_infra

        return list(check_workspace_against_infra(sess.ws, ctx.profile))

    # ------------------------------------------------------------------ data
    def data(self, ctx: StepContext) -> dict[str, Any]:
        """Prepare + validate locally, then upload each split as a uri_file asset versioned by content hash."""
        from amlft.data.step import prepare_run_data

        out = prepare_run_data(ctx)
        sess = _session(ctx)
        with needs_extra("azure", purpose="The Azure backend"):
            from azure.ai.ml.constants import AssetTypes
            from azure.ai.ml.entities import Data

        assets: dict[str, str] = {}
        slug = _dataset_name(ctx)
        for split in ("train", "test", "validation"):
            path = out.get(f"{split}_file")
            if not path:
                continue
            name = f"amlft-{slug}-{split}"
            version = file_sha256(path)[:16]
            ref = f"azureml:{name}:{version}"
            try:
                call(f"Looking up data asset {name}:{version}", sess.ws.data.get, name, version=version)
                ctx.console.info(f"{split}: {ref} already uploaded (same content)")
            except ServiceError as exc:
                if exc.status != 404:
                    raise
                ctx.record.add_resource(DATA_KIND, f"{name}:{version}", billable=False, state="creating")
                asset = Data(name=name, version=version, type=AssetTypes.URI_FILE, path=str(path),
                             description=f"amlft {split} split of {ctx.profile.data.source}",
                             tags={"amlft-run-id": ctx.record.run_id, "source": ctx.profile.data.source})
                # the SDK prints a bare colour-reset line to stderr after every upload
                with contextlib.redirect_stderr(io.StringIO()):
                    call(f"Uploading {path} as data asset {name}:{version}", sess.ws.data.create_or_update, asset)
                ctx.console.info(f"{split}: uploaded {Path(path).name} as {ref}")
            ctx.record.add_resource(DATA_KIND, f"{name}:{version}", billable=False, state="created")
            assets[split] = ref
        ctx.record.set_output("data", assets=assets)
        return {**out, "assets": assets}

    # ------------------------------------------------------------------ submit
    def _job_spec(self, ctx: StepContext, *, component_ref: str, model_path: str, cluster: str, gpus: int,
                  params: dict[str, Any], files: dict[str, str]) -> pipeline.JobSpec:
        prof = ctx.profile
        dataset = _dataset_name(ctx)
        return pipeline.JobSpec(
            component=component_ref, model_path=model_path, cluster=cluster, files=files, gpus_per_node=gpus,
            num_nodes=prof.compute.num_nodes, parameters=params, experiment=prof.pipeline.experiment_name,
            display_name=pipeline.display_name(prof.model.name, dataset, params, gpus_per_node=gpus,
                                               num_nodes=prof.compute.num_nodes),
            tags={**prof.tags, "amlft-run-id": ctx.record.run_id, "base_model": prof.model.name,
                  "dataset": prof.data.source})

    def submit(self, ctx: StepContext) -> dict[str, Any]:
        rec = ctx.record
        sess = _session(ctx)
        prior = rec.output("submit").get("job_name")
        if prior:
            job = call(f"Reading job {prior}", sess.ws.jobs.get, prior)
            if enum_text(job.status) not in ("Failed", "Canceled"):
                ctx.console.info(f"job {prior} already submitted ({job.status}); not submitting again")
                return rec.output("submit")
            ctx.console.info(f"previous job {prior} ended {job.status}; submitting a new one")
        facts = rec.output("check")
        assets = rec.output("data").get("assets") or {}
        if not assets.get("train") or not assets.get("test"):
            raise RecordError(f"Run {rec.run_id} has no uploaded train and test data.",
                              hint=f"Run `amlft data --run {rec.run_id}` and check data.test_split.")
        from amlft.backends.azure.preflight import get_component

        component = get_component(sess, ctx.profile)
        files = {f"{k}_file_path": v for k, v in assets.items()}
        spec = self._job_spec(ctx, component_ref=str(component.id), model_path=facts["model_asset_id"],
                              cluster=str(ctx.profile.compute.cluster), gpus=int(facts["gpus_per_node"]),
                              params=dict(facts.get("parameters") or {}), files=files)
        job = pipeline.build_pipeline_job(component, spec)
        attempt = len(rec.resources(JOB_KIND)) + 1
        job.name = f"amlft-{rec.run_id.replace('.', '-')}-{attempt}"[:255]
        rec.add_resource(JOB_KIND, job.name, state="submitting", billable=True, experiment=spec.experiment)
        try:
            created = call(f"Submitting pipeline job {job.name}", sess.ws.jobs.create_or_update, job,
                           experiment_name=spec.experiment)
        except BaseException:
            rec.update_resource(JOB_KIND, job.name, state="deleted", refused=True)
            raise
        rec.update_resource(JOB_KIND, job.name, state="submitted", studio_url=created.studio_url)
        out = {"job_name": created.name, "experiment": spec.experiment, "display_name": spec.display_name,
               "studio_url": created.studio_url}
        rec.set_output("submit", **out)
        ctx.console.info(f"submitted {created.name} ({spec.display_name})")
        ctx.console.info(f"  studio: {created.studio_url}")
        ctx.console.info(f"  follow it: amlft wait --run {rec.run_id}" + (" --rehearse" if ctx.rehearse else ""))
        endpoints.begin_endpoint(sess, rec, facts.get("endpoint_name") or names.endpoint_name_for_run(rec.run_id),
                                 console=ctx.console)
        return out

    # ------------------------------------------------------------------ wait
    def _cancel_hint(self, ctx: StepContext, job_name: str) -> str:
        if ctx.rehearse:
            return f"amlft teardown --run {ctx.record.run_id}"
        sess = _session(ctx)
        return (f"az ml job cancel --name {job_name} --resource-group {sess.resource_group} "
                f"--workspace-name {sess.workspace_name}")

    def wait(self, ctx: StepContext, *, timeout: float | None = None) -> dict[str, Any]:
        from amlft.backends.azure.poller import wait_for_job

        rec = ctx.record
        job_name = rec.output("submit").get("job_name")
        if not job_name:
            raise RecordError(f"Run {rec.run_id} has no submitted job.", hint=f"Run `amlft submit --run {rec.run_id}`.")
        sess = _session(ctx)
        resume = f"amlft wait --run {rec.run_id}"
        try:
            out = wait_for_job(sess, job_name, console=ctx.console, timeout=timeout,
                               stalled_timeout=ctx.profile.pipeline.stalled_timeout_s, run_id=rec.run_id,
                               resume_hint=resume, cancel_hint=self._cancel_hint(ctx, job_name))
        except (JobFailed, JobCanceled) as exc:
            status = "Canceled" if isinstance(exc, JobCanceled) else "Failed"
            rec.update_resource(JOB_KIND, job_name, state=status.lower(), billable=False)
            rec.set_output("wait", status=status, error=exc.message[:2000])
            raise
        rec.update_resource(JOB_KIND, job_name, state="completed", billable=False)
        rec.set_output("wait", **out)
        return out

    # ------------------------------------------------------------------ register
    def register(self, ctx: StepContext) -> dict[str, Any]:
        rec = ctx.record
        done = rec.output("register")
        if done.get("version") and rec.resources(MODEL_KIND, live_only=True):
            ctx.console.info(f"model {done['name']}:{done['version']} already registered")
            return done
        job_name = rec.output("submit").get("job_name")
        if not job_name or rec.output("wait").get("status") != "Completed":
            raise RecordError(f"Run {rec.run_id} has no completed fine-tune job to register.",
                              hint=f"Run `amlft wait --run {rec.run_id}` until it completes.")
        sess = _session(ctx)
        with needs_extra("azure", purpose="The Azure backend"):
            from azure.ai.ml.constants import AssetTypes
            from azure.ai.ml.entities import Model

        prof = ctx.profile
        name = names.registered_model_name(prof.model.name, prof.data.source)
        version = names.unique_version()
        data = rec.output("data")
        tags = {"amlft-run-id": rec.run_id, "job": job_name, "base_model": rec.output("check").get("model_asset_id")
                or prof.model.name, "dataset": prof.data.source, "data_hash": str(data.get("data_hash") or ""),
                **{f"data_{k}": v for k, v in (data.get("assets") or {}).items()}}
        rec.add_resource(MODEL_KIND, f"{name}:{version}", billable=False, state="creating")
        model = call(f"Registering model {name}:{version}", sess.ws.models.create_or_update,
                     Model(path=f"azureml://jobs/{job_name}/outputs/trained_model", type=AssetTypes.MLFLOW_MODEL,
                           name=name, version=version, tags=tags,
                           description=f"{prof.model.name} fine-tuned on {prof.data.source} by amlft run {rec.run_id}"))
        rec.update_resource(MODEL_KIND, f"{name}:{version}", state="created")
        out = {"name": model.name, "version": str(model.version), "model_uri": f"azureml:{model.name}:{model.version}",
               "model_dir": None, "tags": tags}
        rec.set_output("register", **out)
        ctx.console.info(f"registered {out['model_uri']}")
        return out

    # ------------------------------------------------------------------ deploy
    def deploy(self, ctx: StepContext) -> dict[str, Any]:
        rec = ctx.record
        reg = rec.output("register")
        if not reg.get("model_uri"):
            raise RecordError(f"Run {rec.run_id} has no registered model.", hint=f"Run `amlft register --run {rec.run_id}`.")
        done = rec.output("deploy")
        sess = _session(ctx)
        if done.get("scoring_uri") and any(r["name"] == f"{done['endpoint_name']}/{done['deployment_name']}"
                                           for r in rec.resources(endpoints.DEP_KIND, live_only=True)):
            ctx.console.info(f"already deployed: {done['scoring_uri']}")
            return done
        ep_name = rec.output("check").get("endpoint_name") or ctx.profile.endpoint.name or \
            names.endpoint_name_for_run(rec.run_id)
        out = endpoints.deploy(sess, rec, ctx.profile, endpoint_name=ep_name, model_ref=reg["model_uri"],
                               console=ctx.console, keep_on_failure=bool(ctx.options.get("keep_on_failure")))
        rec.set_output("deploy", **out)
        return out

    def endpoint(self, ctx: StepContext) -> EndpointInfo:
        """The run's endpoint, after a GET confirms it still exists (a stale sweep may have deleted it)."""
        rec = ctx.record
        d = rec.output("deploy")
        if not d.get("scoring_uri"):
            raise RecordError(f"Run {rec.run_id} has no deployed endpoint.",
                              hint=f"Run `amlft deploy --run {rec.run_id}`.")
        name = d["endpoint_name"]
        redeploy = f"Deploy it again: amlft deploy --run {rec.run_id}"
        if not any(r["name"] == name for r in rec.resources(endpoints.EP_KIND, live_only=True)):
            raise RecordError(f"Endpoint {name} of run {rec.run_id} was torn down.", hint=redeploy)
        if not endpoints.endpoint_alive(_session(ctx), name):
            endpoints._mark_gone(rec, name)
            raise RecordError(f"Endpoint {name} of run {rec.run_id} no longer exists in the workspace "
                              "(deleted outside this run, e.g. by `amlft teardown --stale`).", hint=redeploy)
        return EndpointInfo(scoring_uri=d["scoring_uri"], openai_base_url=d.get("openai_base_url"),
                            contract=d.get("contract") or "azureml", name=d["endpoint_name"])

    def endpoint_key(self, ctx: StepContext) -> str:
        info = self.endpoint(ctx)
        sess = _session(ctx)
        keys = call(f"Reading the keys of endpoint {info.name}", sess.ws.online_endpoints.get_keys, info.name)
        return str(keys.primary_key)

    # ------------------------------------------------------------------ teardown
    def teardown(self, ctx: StepContext, *, delete_model: bool = False) -> dict[str, Any]:
        rec = ctx.record
        live_eps = rec.resources(endpoints.EP_KIND, live_only=True)
        live_jobs = [r for r in rec.resources(JOB_KIND, live_only=True) if r.get("billable", True)]
        models = rec.resources(MODEL_KIND, live_only=True) if delete_model else []
        done: dict[str, Any] = {"endpoints": {}, "jobs": {}, "models": {}}
        if not (live_eps or live_jobs or models):
            ctx.console.info("nothing of this run is left to tear down")
            return done
        sess = _session(ctx)
        for r in live_jobs:
            done["jobs"][r["name"]] = self._cancel_job(sess, ctx, r["name"])
        for r in live_eps:
            done["endpoints"][r["name"]] = endpoints.delete_endpoint(
                sess, rec, r["name"], console=ctx.console, timeout_s=ctx.profile.endpoint.operation_timeout_s)
        for r in models:
            name, _, version = r["name"].rpartition(":")
            try:
                call(f"Archiving model {r['name']}", sess.ws.models.archive, name=name, version=version)
                done["models"][r["name"]] = "archived"
            except ServiceError as exc:
                if exc.status != 404:
                    raise
                done["models"][r["name"]] = "already gone"
            rec.mark_deleted(MODEL_KIND, r["name"])
            ctx.console.info(f"archived model {r['name']}")
        return done

    def _cancel_job(self, sess: Any, ctx: StepContext, name: str) -> str:
        rec = ctx.record
        try:
            job = call(f"Reading job {name}", sess.ws.jobs.get, name)
        except ServiceError as exc:
            if exc.status == 404:
                rec.update_resource(JOB_KIND, name, state="deleted", billable=False)
                return "not found"
            raise
        status = enum_text(job.status)
        if is_terminal(status):
            rec.update_resource(JOB_KIND, name, state=status.lower(), billable=False)
            return status
        poller = call(f"Canceling job {name}", sess.ws.jobs.begin_cancel, name)
        endpoints.wait_lro(sess, poller, f"cancellation of job {name}", console=ctx.console,
                           timeout_s=ctx.profile.endpoint.operation_timeout_s,
                           resume=f"amlft teardown --run {rec.run_id}", delete=self._cancel_hint(ctx, name))
        rec.update_resource(JOB_KIND, name, state="canceled", billable=False)
        ctx.console.info(f"canceled job {name} (its compute stops billing)")
        return "canceled"

    def left_running(self, ctx: StepContext) -> list[str]:
        """This run's billable resources, as the service sees them now."""
        rec = ctx.record
        live = [r for r in rec.resources(live_only=True) if r.get("billable", True)]
        if not live:
            return []
        sess = _session(ctx)
        out: list[str] = []
        for r in live:
            if r["kind"] == endpoints.EP_KIND:
                if endpoints.endpoint_alive(sess, r["name"]):
                    out.append(f"endpoint {r['name']}")
                else:
                    endpoints._mark_gone(rec, r["name"])
            elif r["kind"] == endpoints.DEP_KIND:
                ep = r.get("endpoint") or r["name"].split("/")[0]
                if any(x["name"] == ep for x in rec.resources(endpoints.EP_KIND, live_only=True)):
                    out.append(f"deployment {r['name']}")
            elif r["kind"] == JOB_KIND:
                job = call(f"Reading job {r['name']}", sess.ws.jobs.get, r["name"])
                if is_terminal(enum_text(job.status)):
                    rec.update_resource(JOB_KIND, r["name"], state=enum_text(job.status).lower(), billable=False)
                else:
                    out.append(f"job {r['name']} ({job.status})")
        return out

    # ------------------------------------------------------------------ dry run
    def dry_run(self, ctx: StepContext, *, export_path: str | None = None) -> dict[str, Any]:
        """Validate and build the job offline (no credential, no network); optionally export it as YAML."""
        prof = ctx.profile
        problems: list[dict[str, Any]] = []
        notes: list[str] = []
        snapshot = pipeline.load_snapshot()
        inputs = snapshot["inputs"]
        from amlft.backends.azure.preflight import finding, offline_checks

        found, merged, gpus = offline_checks(prof, run_id=ctx.record.run_id, inputs=inputs)
        problems.extend(found)
        cluster, sku = prof.compute.cluster, prof.compute.instance_type
        notes.append("offline: model allow-lists, model_specific_defaults, cluster state and quota are checked by "
                     "`amlft check` (needs the workspace)")
        files = self._dry_run_files(ctx, notes, problems)
        model_path = pipeline.model_asset_id(prof.workspace.registry, prof.model.name, version=prof.model.version,
                                             label=prof.model.label)
        comp = pipeline.component_id(prof.workspace.registry, prof.pipeline.component, version=prof.pipeline.version,
                                     label=prof.pipeline.label)
        spec = self._job_spec(ctx, component_ref=comp, model_path=model_path, cluster=cluster or "serverless",
                              gpus=int(gpus or 1), params=merged.values, files=files)
        for p in pipeline.validate_spec(spec, inputs):
            problems.append(finding("error", "component.bad_input", p, "Fix the profile field that sets it."))
        cost = skus.cost_summary(cluster_sku=sku, num_nodes=prof.compute.num_nodes, endpoint_sku=prof.endpoint.instance_type,
                                 instance_count=prof.endpoint.instance_count, overrides=prof.prices)
        for n in notes:
            ctx.console.info(f"note: {n}")
        ctx.console.info(f"display name: {spec.display_name}")
        ctx.console.info(f"cost: {cost['summary']}")
        if problems:
            ctx.console.table([{k: p[k] for k in ("severity", "check", "message")} for p in problems],
                              title="Dry-run findings")
        if any(p["severity"] == "error" for p in problems):
            raise PreflightError(problems)
        out: dict[str, Any] = {"display_name": spec.display_name, "component": comp, "model": model_path,
                               "inputs": {**spec.scalar_inputs(), **spec.files}, "cost": cost, "problems": problems}
        if export_path:
            path = pipeline.export_yaml(spec, Path(export_path), inputs=inputs)
            ctx.console.info(f"wrote {path} (submit it with `az ml job create -f {path}` or `amlft submit`)")
            out["export"] = str(path)
        elif export_path is None:
            ctx.console.info("dry run OK (add --export job.yml to write the job as az ml YAML)")
        return out

    def _dry_run_files(self, ctx: StepContext, notes: list[str], problems: list[dict[str, Any]]) -> dict[str, str]:
        """The job's data inputs: uploaded assets, else the profile's data prepared and validated now
        (locally, nothing uploaded). Data that cannot be prepared is a finding, never a stand-in sample."""
        from amlft.backends.azure.preflight import finding
        from amlft.data.step import prepare_run_data
        from amlft.errors import DataError

        data = ctx.record.output("data")
        if data.get("assets"):
            return {f"{k}_file_path": v for k, v in data["assets"].items()}
        if not (data.get("train_file") and Path(data["train_file"]).exists()):
            try:
                data = prepare_run_data(ctx)
            except DataError as exc:
                problems.append(finding("error", "data", exc.message, exc.hint or "Fix data.* in the profile."))
                return {"train_file_path": "(not prepared)", "test_file_path": "(not prepared)"}
            notes.append(f"data prepared and validated locally for this dry run in {Path(data['train_file']).parent} "
                         "(`amlft data` uploads it)")
        if not data.get("test_file"):
            problems.append(finding("error", "data", f"{ctx.profile.data.source} has no test split "
                                    f"({ctx.profile.data.test_split!r}); the fine-tune component needs one.",
                                    "Set data.test_split, or data.test_fraction to hold out part of the train split."))
        files = {"train_file_path": data["train_file"], "test_file_path": data.get("test_file") or "(none)"}
        if data.get("validation_file"):
            files["validation_file_path"] = data["validation_file"]
        return files
