// Types for reprise-replay.js (for TypeScript front ends, e.g. Laravel's React and Vue starter kits).

/** The cursor before a channel's first event. */
export const ZERO_ID: string;

/** The default prefix of the keys written to `storage`. */
export const DEFAULT_STORAGE_PREFIX: string;

/** The outcome of a resume, given to the hooks. */
export interface ResumeInfo {
  /** The Pusher channel name, e.g. 'private-orders.1'. */
  channel: string;
  recovered: boolean;
  /** Events replayed (0 when not recovered). */
  count: number;
  /** The id the client resumed after. */
  since: string;
  /** The channel's last event id on the server, if it has one. */
  head: string | null;
}

export interface ReplayStats {
  /** Subscriptions that asked to resume (sent `since`). */
  resumes: number;
  recovered: number;
  notRecovered: number;
  /** Events the server replayed. */
  replayed: number;
  /** Events dropped because their sequence was at or below the last one delivered. */
  duplicatesDropped: number;
}

export interface ReplayOptions {
  /** Keeps cursors across page reloads. Use `window.sessionStorage` (one tab, one cursor). */
  storage?: Pick<Storage, 'getItem' | 'setItem' | 'removeItem'>;
  /** Prefix of the storage keys. Default 'reprise-replay:'. */
  storagePrefix?: string;
  /** The events missed on `channel` could not be replayed: refetch its state. */
  onNotRecovered?: (channel: string, info: ResumeInfo) => void;
  /** A resume replayed `info.count` events; runs just before they are delivered. */
  onRecovered?: (channel: string, info: ResumeInfo) => void;
}

export interface ReplayController {
  /** A hook for one channel; replaces the global one for it. Returns a function that removes it. */
  onNotRecovered(channel: string, callback: (info: ResumeInfo) => void): () => void;
  /** A hook for one channel; replaces the global one for it. Returns a function that removes it. */
  onRecovered(channel: string, callback: (info: ResumeInfo) => void): () => void;
  /** The id the next subscription to `channel` would resume after, or null. */
  cursor(channel: string): string | null;
  /** Makes the first subscription to `channel` resume after `id`. Call it before subscribing. */
  resumeFrom(channel: string, id: string): void;
  /** Forgets `channel`'s cursor: its next subscription starts afresh. */
  forget(channel: string): void;
  /** Whether the event being delivered on `channel` right now was replayed. */
  isReplaying(channel: string): boolean;
  /** Counters for one channel, or summed over all. */
  stats(channel?: string): ReplayStats;
  /** Undoes the patches on the pusher-js class. */
  disable(): void;
}

/** Turns replay on for every connection the pusher-js class makes from now on. */
export function enableReplay(Pusher: unknown, options?: ReplayOptions): ReplayController;

/** The per-channel sequence of a Reprise event id, or null when `id` is not a ULID. */
export function eventSeq(id: unknown): bigint | null;
