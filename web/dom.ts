/**
 * The few DOM types the page and the browser test use. `deno check .` checks every file of the
 * repository as one program, and `/// <reference lib="dom" />` anywhere would swap Deno's own
 * WebSocket and friends for the browser's in every file (tests/helpers.ts passes `headers` to a
 * WebSocket, which only Deno's accepts); so the page declares what it touches instead.
 *
 * @module
 */

/** A list of nodes, as `querySelectorAll` returns it. */
export interface PageNodeList<T> extends Iterable<T> {
  /** How many. */
  readonly length: number;
}

/** An element, with the members the page uses. */
export interface PageElement extends EventTarget {
  /** Class attribute. */
  className: string;
  /** Text of the element and its descendants. */
  textContent: string | null;
  /** The `hidden` attribute. */
  hidden: boolean;
  /** Tooltip. */
  title: string;
  /** `data-*` attributes. */
  readonly dataset: Record<string, string | undefined>;
  /** Class list. */
  readonly classList: {
    add(...tokens: string[]): void;
    remove(...tokens: string[]): void;
    toggle(token: string, force?: boolean): boolean;
    contains(token: string): boolean;
  };
  /** First child node. */
  readonly firstChild: PageElement | null;
  /** Scroll position and extent. */
  scrollTop: number;
  /** Height of the content. */
  readonly scrollHeight: number;
  /** Height of the visible box. */
  readonly clientHeight: number;
  /** Appends nodes or text. */
  append(...nodes: (PageElement | string)[]): void;
  /** Replaces the children. */
  replaceChildren(...nodes: (PageElement | string)[]): void;
  /** Inserts a node before another (or at the end for null). */
  insertBefore(node: PageElement, child: PageElement | null): PageElement;
  /** Removes the element from its parent. */
  remove(): void;
  /** Focuses the element. */
  focus(): void;
  /** First matching descendant. */
  querySelector(selectors: string): PageElement | null;
  /** Every matching descendant. */
  querySelectorAll(selectors: string): PageNodeList<PageElement>;
}

/** `<input>`, `<textarea>` and `<button>`. */
export interface PageInput extends PageElement {
  /** Current value. */
  value: string;
  /** Placeholder text. */
  placeholder: string;
  /** Disabled state. */
  disabled: boolean;
  /** Chosen files of a file input. */
  readonly files: PageNodeList<File> | null;
}

/** `<a>`. */
export interface PageAnchor extends PageElement {
  /** Link target URL. */
  href: string;
  /** Browsing context. */
  target: string;
  /** Link relation. */
  rel: string;
}

/** `<img>`. */
export interface PageImage extends PageElement {
  /** Image URL. */
  src: string;
  /** Alternative text. */
  alt: string;
  /** `lazy` or `eager`. */
  loading: string;
  /** True once loaded (or failed). */
  readonly complete: boolean;
  /** Intrinsic width, 0 until loaded. */
  readonly naturalWidth: number;
}

/** `<time>`. */
export interface PageTime extends PageElement {
  /** Machine-readable time. */
  dateTime: string;
}

/** `<progress>`. */
export interface PageProgress extends PageElement {
  /** Current value. */
  value: number;
}

/** A canvas gradient. */
export interface PageGradient {
  /** Adds a colour stop. */
  addColorStop(offset: number, color: string): void;
}

/** `<canvas>`, for the browser test's generated image. */
export interface PageCanvas extends PageElement {
  /** Width in pixels. */
  width: number;
  /** Height in pixels. */
  height: number;
  /** The 2D context. */
  getContext(kind: "2d"): {
    fillStyle: string | PageGradient;
    fillRect(x: number, y: number, w: number, h: number): void;
    createLinearGradient(x0: number, y0: number, x1: number, y1: number): PageGradient;
  } | null;
  /** Encodes the canvas. */
  toDataURL(type?: string): string;
}

/** Element types by tag name. */
export interface PageTags {
  /** Anchor. */
  a: PageAnchor;
  /** Canvas. */
  canvas: PageCanvas;
  /** Division. */
  div: PageElement;
  /** Image. */
  img: PageImage;
  /** List item. */
  li: PageElement;
  /** Ordered list. */
  ol: PageElement;
  /** Span. */
  span: PageElement;
  /** Time. */
  time: PageTime;
}

/** A drag-and-drop event. */
export interface PageDragEvent extends Event {
  /** The dragged data. */
  readonly dataTransfer:
    | { readonly types: readonly string[]; readonly files: PageNodeList<File> }
    | null;
}

/** The document. */
export interface PageDocument extends EventTarget {
  /** `<body>`. */
  readonly body: PageElement;
  /** `visible` or `hidden`. */
  readonly visibilityState: string;
  /** Window title. */
  title: string;
  /** An element by id. */
  getElementById(id: string): PageElement | null;
  /** First matching element. */
  querySelector(selectors: string): PageElement | null;
  /** Every matching element. */
  querySelectorAll(selectors: string): PageNodeList<PageElement>;
  /** A new element. */
  createElement<K extends keyof PageTags>(tag: K): PageTags[K];
}

/** The session history, for the room in the URL's hash. */
export interface PageHistory {
  /** Replaces the current entry's URL. */
  replaceState(state: unknown, unused: string, url?: string): void;
}
