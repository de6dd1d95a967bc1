// Waiting with a deadline: every wait in this suite fails with a message instead of hanging.

/** Default deadline for one expected thing to happen (an event, a state change). */
export const WAIT_MS = 5_000;

/** Resolves like `promise`, or rejects after `ms` with a message naming what was awaited. */
export function withTimeout(promise, ms, what) {
  let timer;
  const deadline = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms waiting for ${what}`)), ms);
  });
  return Promise.race([promise, deadline]).finally(() => clearTimeout(timer));
}

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/**
 * Polls `check` (sync or async) until it returns a truthy value, which is returned.
 * Used for server-side state that has no event to wait on (a close being processed).
 */
export async function eventually(check, what, ms = WAIT_MS, everyMs = 25) {
  const giveUp = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (error) {
      last = error;
    }
    if (Date.now() > giveUp) {
      throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${formatLast(last)})`);
    }
    await sleep(everyMs);
  }
}

function formatLast(value) {
  if (value instanceof Error) return value.message;
  try {
    return JSON.stringify(value);
  } catch {
    return String(value);
  }
}

/**
 * Records every call of a callback and lets a test wait for the n-th one.
 *
 *   const got = recorder();
 *   channel.listen('.status', got.fn);
 *   const [data] = await got.next('the status event');
 */
export function recorder() {
  const calls = [];
  const waiters = [];
  const fn = (...args) => {
    calls.push(args);
    for (const waiter of [...waiters]) {
      if (calls.length >= waiter.count) {
        waiters.splice(waiters.indexOf(waiter), 1);
        waiter.resolve(calls[waiter.count - 1]);
      }
    }
  };
  /** Waits until there are at least `count` calls; resolves to the arguments of call `count`. */
  const nth = (count, what, ms = WAIT_MS) => {
    if (calls.length >= count) return Promise.resolve(calls[count - 1]);
    const reached = new Promise((resolve) => waiters.push({ count, resolve }));
    return withTimeout(reached, ms, `${what} (call ${count}; ${calls.length} so far)`);
  };
  let consumed = 0;
  return {
    fn,
    calls,
    /** The arguments of each call, as first arguments only (most callbacks take one). */
    get values() {
      return calls.map((args) => args[0]);
    },
    nth,
    /** Waits for the call after the last one `next` returned. */
    next(what, ms) {
      consumed += 1;
      return nth(consumed, what, ms);
    },
  };
}
