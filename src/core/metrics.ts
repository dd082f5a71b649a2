/** Process-wide counters, rendered in Prometheus text format by the HTTP layer. */

/** Counters and gauges of this isolate. */
export class Metrics {
  /** Open sockets by protocol. */
  readonly connections = new Map<string, number>();
  /** Messages accepted from clients. */
  messagesIn = 0;
  /** Frames written to sockets of the WebSocket protocols. */
  framesOut = 0;
  /** Bytes (UTF-8) received in the WebSocket protocols' client frames. */
  bytesIn = 0;
  /** Engine.IO packets written to Socket.IO clients, WebSocket or long-polling. */
  socketIoFramesOut = 0;
  /** Bytes Socket.IO clients sent: WebSocket messages and long-polling POST bodies. */
  socketIoBytesIn = 0;
  /** Attachment bytes stored. */
  attachmentBytes = 0;
  /** Errors sent to clients, by code. */
  readonly errors = new Map<string, number>();
  /** Sum and count of commit latencies in seconds. */
  commitSeconds = 0;
  /** Number of commits measured. */
  commits = 0;
  /** Sockets the runtime closed because its heartbeat ping went unanswered. */
  pingTimeouts = 0;

  /** Counts Socket.IO's traffic, told by its Engine.IO server (one call per write: no more). */
  readonly socketIoTraffic = {
    sent: (packets: number): void => {
      this.socketIoFramesOut += packets;
    },
    received: (bytes: number): void => {
      this.socketIoBytesIn += bytes;
    },
  };

  /** Adjusts the open connection gauge of a protocol. */
  connection(protocol: string, delta: number): void {
    this.connections.set(protocol, (this.connections.get(protocol) ?? 0) + delta);
  }

  /** Counts an error sent to a client. */
  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  /** Total open connections. */
  get openConnections(): number {
    let total = 0;
    for (const n of this.connections.values()) total += n;
    return total;
  }
}
