"""The vLLM metric names Cascade's rules and dashboards query, pinned (checked against a real server's /metrics
by tests/test_e2e_vllm.py, so that they cannot drift apart)."""

VLLM_METRICS = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:e2e_request_latency_seconds",
}
