/**
 * `/metrics` under `deno serve --parallel`: a scrape reaches one isolate, which asks the other
 * isolates of its process for their counters over a `BroadcastChannel` and answers with all of
 * them, each series labelled with its isolate.
 */

/** A question or an answer on the channel. */
type Note =
  | { kind: "ask"; nonce: string }
  | { kind: "answer"; nonce: string; isolate: string; text: string };

/** Asks and answers for the isolates that share one store (channels are named after it). */
export class MetricsExchange {
  #channel: BroadcastChannel;
  #isolate: string;
  #render: () => string;
  #waiting = new Map<string, (isolate: string, text: string) => void>();

  /** Answers for `isolate` with `render()`, on the channel of `namespace` (the KV location). */
  constructor(namespace: string, isolate: string, render: () => string) {
    this.#isolate = isolate;
    this.#render = render;
    this.#channel = new BroadcastChannel(`chat:${namespace}:metrics`);
    this.#channel.onmessage = (e: MessageEvent<Note>) => {
      const note = e.data;
      if (note.kind === "ask") {
        // A throw in a channel's handler would end the isolate: the asker just goes without.
        try {
          const text = this.#render();
          this.#channel.postMessage({ kind: "answer", nonce: note.nonce, isolate, text });
        } catch (err) {
          console.error("metrics: answering another isolate failed:", err);
        }
      } else {
        this.#waiting.get(note.nonce)?.(note.isolate, note.text);
      }
    };
  }

  /**
   * This isolate's text, and that of up to `others` other isolates that answer within
   * `waitMs`; with others, every series carries an `isolate` label.
   */
  async gather(others: number, waitMs = 250): Promise<string> {
    const own = this.#render();
    if (others <= 0) return own;
    const nonce = crypto.randomUUID();
    const answers = new Map<string, string>([[this.#isolate, own]]);
    await new Promise<void>((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#waiting.delete(nonce);
        resolve();
      };
      const timer = setTimeout(done, waitMs);
      this.#waiting.set(nonce, (isolate, text) => {
        answers.set(isolate, text);
        if (answers.size > others) done();
      });
      this.#channel.postMessage({ kind: "ask", nonce });
    });
    return mergeMetrics(answers);
  }

  /** Stops answering. */
  close(): void {
    this.#channel.close();
  }
}

/**
 * Prometheus texts of several isolates as one: each family's HELP and TYPE once, then its
 * series from every isolate with `isolate="<id>"` added to their labels.
 */
export function mergeMetrics(texts: ReadonlyMap<string, string>): string {
  const families = new Map<string, { head: string[]; series: string[] }>();
  for (const [isolate, text] of texts) {
    for (const line of text.split("\n")) {
      if (line === "") continue;
      const comment = /^# (HELP|TYPE) (\S+)/.exec(line);
      const name = comment ? comment[2] : /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)?.[0];
      if (!name) continue;
      let family = families.get(name);
      if (!family) {
        family = { head: [], series: [] };
        families.set(name, family);
      }
      if (comment) {
        if (!family.head.some((h) => h.startsWith(`# ${comment[1]} `))) family.head.push(line);
        continue;
      }
      const rest = line.slice(name.length);
      const label = `isolate="${isolate}"`;
      family.series.push(
        rest.startsWith("{") ? `${name}{${label},${rest.slice(1)}` : `${name}{${label}}${rest}`,
      );
    }
  }
  const out: string[] = [];
  for (const { head, series } of families.values()) out.push(...head, ...series);
  return out.join("\n") + "\n";
}
