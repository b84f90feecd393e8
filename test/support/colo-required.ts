/**
 * Where the patched QEMU must exist: `.ci/run` builds it (`make qemu-colo`)
 * before the tests and sets SHADOWVM_REQUIRE_COLO=1, so there a missing
 * build is a failed test, never a quiet skip. Elsewhere the COLO tests are
 * skipped with their reason in their names.
 */
export function failIfColoRequired(patched: string | null | undefined, notBuilt: string): void {
  if (patched || process.env.SHADOWVM_REQUIRE_COLO !== '1') return;
  it('has the patched QEMU that .ci/run built first (SHADOWVM_REQUIRE_COLO=1)', () => {
    throw new Error(`${notBuilt}; see the make qemu-colo output above`);
  });
}
