// Types for sticky-session 2: the 1.x and 0.x APIs of sticky-session for servers run by sticky.
/// <reference types="node" />
import type { Server } from 'node:net';

/**
 * sticky-session 0.x: returns `server` (or what `factory` returns), whose `listen(port, cb)`
 * then serves sticky's sockets under `sticky run`, or `port` in this one process otherwise.
 * Throws when the factory returns nothing.
 */
declare function sticky<S extends Server>(server: S | (() => S)): S;
/** sticky-session 0.x with a worker count or options; `num` is set by `sticky run --workers`. */
declare function sticky<S extends Server>(
  options: number | sticky.Options,
  server: S | (() => S),
): S;

declare namespace sticky {
  /** Options of the 0.x API, accepted for compatibility. */
  interface Options {
    /** Ignored: `sticky run --workers N` sets the workers (0 returns the server untouched). */
    num?: number;
    /** Ignored: sticky hashes the client's TCP source address. */
    trustedAddresses?: string[];
  }

  /** Options of the 1.x API, accepted for compatibility. */
  interface ListenOptions {
    /** Ignored: `sticky run --workers N` sets the workers. */
    workers?: number;
    /** Ignored: `sticky run --env KEY=VALUE` sets the workers' environment. */
    env?: Record<string, string | undefined>;
    /** Outside sticky, the address to listen on; under sticky, `sticky run --listen` sets it. */
    host?: string;
    /** As in 1.x: makes `listen` return false in a worker. */
    returnInstance?: boolean;
  }

  /**
   * sticky-session 1.x: serves `server` on sticky's sockets under `sticky run` (the port is
   * sticky's `--listen`) and on the connections sticky hands over through node's IPC channel
   * (trusted proxies' and `--dispatch userspace`: `STICKY_HANDOFF=node`), or on `port` in this
   * one process otherwise; emits 'listening', tells
   * sticky READY=1, and on SIGTERM says STOPPING=1, closes the server and exits once its
   * connections end or the grace period has passed. Returns true (this process serves).
   */
  function listen(server: Server, port: number, options?: ListenOptions): boolean;
}

export = sticky;

declare module 'node:net' {
  interface Socket {
    /**
     * On a connection sticky handed over from a trusted proxy that named its client in a
     * PROXY protocol header (which sticky took off): that client's address.
     */
    clientAddress?: string;
  }
}
