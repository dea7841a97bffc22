import assert from "node:assert/strict";
import { describe, it } from "node:test";
import { KERNEL_INTERRUPT_BUDGET, tieringFlag } from "../src/kernel/v8-tiering.js";

/*
 * The kernel lowers V8's interrupt budget so its request path is optimized within its first
 * ~1,000 requests (BENCHMARKS.md, round twenty-four); an operator's own budget is kept.
 */
describe("the kernel's V8 tiering", () => {
  it("tieringFlag asks for KERNEL_INTERRUPT_BUDGET unless the process was given its own --interrupt-budget", () => {
    assert.equal(tieringFlag([], ""), `--interrupt-budget=${KERNEL_INTERRUPT_BUDGET}`);
    assert.ok(KERNEL_INTERRUPT_BUDGET < 66 * 1024, "below V8's default (Node 20: 67584)");
    assert.equal(tieringFlag(["--interrupt-budget=4096"], ""), undefined);
    assert.equal(tieringFlag(["--max-old-space-size=512"], "--interrupt_budget=65536"), undefined);
    assert.equal(tieringFlag(["--max-old-space-size=512"], "--trace-gc"), `--interrupt-budget=${KERNEL_INTERRUPT_BUDGET}`);
    // A different flag that merely begins with the name leaves the budget to the kernel.
    assert.equal(
      tieringFlag(["--interrupt-budget-for-feedback-allocation=940"], "--interrupt_budget_factor_for_feedback_allocation=8"),
      `--interrupt-budget=${KERNEL_INTERRUPT_BUDGET}`,
    );
    assert.equal(tieringFlag([], "--interrupt-budget 4096"), undefined);
  });
});
