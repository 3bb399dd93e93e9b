"""The benchmark's arithmetic and table: the bound and the physical limit from the stages'
CPU cost per frame, and the printed table of every figure."""

from typing import Dict


def physical_limit(envs: Dict, forward: Dict, learner: Dict, num_cores: int) -> Dict:
    """Frames/s if the cores did only the raw work: the environments at their cheapest ALE
    thread count (`envs`: threads -> env stage), the raw forward pass and the learning."""
    threads, env = min(envs.items(), key=lambda item: item[1]["core_s_per_frame"])
    per_frame = (env["core_s_per_frame"] + forward["core_s_per_frame"]
                 + learner["core_s_per_frame"])
    return {"cores": num_cores, "ale_threads": threads,
            "env_core_s_per_frame": env["core_s_per_frame"],
            "forward_core_s_per_frame": forward["core_s_per_frame"],
            "learning_core_s_per_frame": learner["core_s_per_frame"],
            "frames_per_s": num_cores / per_frame}


def bound(env: Dict, actor: Dict, learner: Dict, num_cores: int) -> Dict:
    """Frames/s if the cores did only env stepping, inference and learning."""
    inference = max(0.0, actor["core_s_per_frame"] - env["core_s_per_frame"])
    per_frame = env["core_s_per_frame"] + inference + learner["core_s_per_frame"]
    return {"cores": num_cores, "env_core_s_per_frame": env["core_s_per_frame"],
            "inference_core_s_per_frame": inference,
            "learning_core_s_per_frame": learner["core_s_per_frame"],
            "frames_per_s": num_cores / per_frame}


def _fmt(x, spec=",.0f"):
    return "n/a" if x is None else format(x, spec)


def print_table(results: Dict) -> None:
    print(f"\n# impala_tf benchmark, {results['date']}, {results['machine']}")
    print(f"# {results['command']}\n")
    print(f"{'stage':34s} {'frames/s':>10s} {'core-us/frame':>14s} {'cores used':>11s}  notes")

    def row(name, r, notes=""):
        print(f"{name:34s} {_fmt(r.get('frames_per_s')):>10s} "
              f"{_fmt(1e6 * r['core_s_per_frame'] if 'core_s_per_frame' in r else None, '.1f'):>14s} "
              f"{_fmt(r.get('cores_used'), '.2f'):>11s}  {notes}")

    s = results["stages"]
    if "env" in s:
        row(f"env ({s['env']['num_envs']} envs, random actions)", s["env"])
        for threads, r in s.get("env_by_ale_threads", {}).items():
            if threads != "default":
                row(f"env, ALE at {threads} thread{'s' * (threads != '1')}", r)
    if "forward" in s:
        f = s["forward"]
        row(f"forward pass alone (batch {f['num_envs']})", f,
            f"graph {1e6 * f['graph_core_s_per_frame']:.1f}, XLA "
            f"{1e6 * f['xla_core_s_per_frame']:.1f} us/frame")
    if "actor" in s:
        row("actor (envs + inference + encode)", s["actor"],
            f"{s['actor']['unroll_bytes'] / 1e3:,.0f} kB per unroll")
    for r in s.get("learner", []):
        row(f"learner, {r['strategy']} ({r['replicas']} replica{'s' * (r['replicas'] > 1)})", r,
            f"T={r['unroll_length']} B={r['batch_size']}: {r['seconds_per_update']:.3f} s/update")
    if "vtrace" in s:
        print("\nV-trace alone, B=32 (us per call): " + ", ".join(
            f"{k} {v:,.0f}" for k, v in s["vtrace"]["microseconds_per_call"].items()))
    if "transport" in s:
        t = s["transport"]
        print(f"transport ({t['unroll_bytes'] / 1e3:,.0f} kB unrolls): encode "
              f"{t['encode_mb_per_s']:,.0f} MB/s, decode+validate "
              f"{t['decode_validate_mb_per_s']:,.0f} MB/s, gRPC loopback "
              f"{t['grpc_unrolls_per_s']:,.0f} unrolls/s = {t['grpc_mb_per_s']:,.0f} MB/s")
    if "ingest" in s:
        i = s["ingest"]
        print(f"ingest: {i['actors_served']} of {i['actors']} actor streams served, "
              f"{i['frames_per_s']:,.0f} frames/s, learner "
              f"{_fmt(i['learner_cpu_us_per_frame'], '.1f')} us CPU per frame, "
              f"{i['wire_bytes_per_frame']:,.0f} wire bytes per frame, "
              f"{i['rejected_unrolls']} rejected "
              f"(at most {i['max_concurrent_rpcs']} calls at once)")
    if "bound" in results:
        b = results["bound"]
        print(f"\nbound on {b['cores']} cores: {b['frames_per_s']:,.0f} frames/s "
              f"(per frame: env {1e6 * b['env_core_s_per_frame']:.1f} us, inference "
              f"{1e6 * b['inference_core_s_per_frame']:.1f} us, learning "
              f"{1e6 * b['learning_core_s_per_frame']:.1f} us of CPU)")
    if "physical_limit" in results:
        p = results["physical_limit"]
        print(f"physical limit on {p['cores']} cores: {p['frames_per_s']:,.0f} frames/s (per "
              f"frame: env {1e6 * p['env_core_s_per_frame']:.1f} us with ALE's "
              f"{p['ale_threads']} threads, forward {1e6 * p['forward_core_s_per_frame']:.1f}"
              f" us, learning {1e6 * p['learning_core_s_per_frame']:.1f} us of CPU)")
    if "loop" in s:
        for r in (s["loop"]["caller"], s["loop"]["thread"]):
            print(f"learner loop, publishing from the {r['publish']}: "
                  f"{1e3 * r['loop_seconds_per_update']:.2f} ms per update besides the update's "
                  f"{1e3 * r['update_seconds_per_update']:.1f} ms ({r['updates']} updates; "
                  f"publication lag {_fmt(r['publish_lag_mean'], '.2f')} updates, "
                  f"{r['superseded']} snapshots superseded)")
        print(f"learner loop: the thread's cost is {s['loop']['loop_ratio']:.2f}x the caller's")
    for r in s.get("end_to_end", []):
        mode = f"{r.get('inference', 'actor')} inference"
        if "error" in r:
            print(f"end-to-end ({mode}), {r['num_actors']} actors, learner on "
                  f"{r['learner_devices']} device(s): failed ({r['error'][-200:]})")
            continue
        ratio = ", ".join(
            f"{r['frames_per_s'] / results[key]['frames_per_s']:.0%} of the {name}"
            for key, name in (("bound", "bound"), ("physical_limit", "physical limit"))
            if key in results)
        memory = [m for m in r.get("actor_rss_mb", []) if m is not None]
        if memory:
            ratio += f"; actors resident {', '.join(f'{m:,.0f}' for m in memory)} MB"
        print(f"end-to-end ({mode}), {r['num_actors']} actors, learner on "
              f"{r['learner_devices']} device(s): {r['frames_per_s']:,.0f} frames/s {ratio}; lag "
              f"{_fmt(r['policy_lag_mean'], '.1f')}, queue fill {r['queue_fill_mean']:.2f}, "
              f"cores: learner {_fmt(r['learner_cores_used'], '.2f')}, actors "
              f"{', '.join(_fmt(a, '.2f') for a in r['actor_cores_used'])} "
              f"(total {r['total_cores_used']:.2f}); observation bytes per frame "
              f"{_fmt(r.get('observation_bytes_per_frame'))}")
