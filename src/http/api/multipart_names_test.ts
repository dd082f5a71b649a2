import { assertEquals } from "../../../tests/assert.ts";
import { dispositionNames, MultipartNames } from "./multipart_names.ts";

/** A form as a browser would send it: its body's bytes and boundary. */
async function encoded(form: FormData): Promise<{ bytes: Uint8Array; boundary: string }> {
  const res = new Response(form);
  const type = res.headers.get("content-type")!;
  return { bytes: await res.bytes(), boundary: /boundary=(.+)$/.exec(type)![1] };
}

function scan(bytes: Uint8Array, boundary: string, chunk: number): MultipartNames {
  const names = new MultipartNames(boundary);
  for (let i = 0; i < bytes.length; i += chunk) names.push(bytes.subarray(i, i + chunk));
  return names;
}

Deno.test("multipart names: every part's names, however the body is cut into chunks", async () => {
  const form = new FormData();
  form.append("body", "hello; there=1");
  form.append("file", new File([new Uint8Array(70_000).fill(13)], "Budget 2026; v2.pdf"));
  form.append("file", new File(["x\r\n--not the boundary"], 'a=b "quoted".txt'));
  form.append("client_id", "c-1");
  const { bytes, boundary } = await encoded(form);
  for (const chunk of [1, 2, 7, 61, 4096, bytes.length]) {
    const names = scan(bytes, boundary, chunk);
    assertEquals(names.complete, true, `chunks of ${chunk}`);
    assertEquals(names.parts, [
      { name: "body" },
      { name: "file", filename: "Budget 2026; v2.pdf" },
      { name: "file", filename: 'a=b "quoted".txt' },
      { name: "client_id" },
    ], `chunks of ${chunk}`);
  }
});

Deno.test("multipart names: a delimiter or a header cut between two chunks at any byte", async () => {
  const form = new FormData();
  form.append("note", "n".repeat(500));
  form.append("file", new File(["\r\n-".repeat(200)], "x; y.txt"));
  form.append("file", new File(["z".repeat(500)], "a=b.txt"));
  const { bytes, boundary } = await encoded(form);
  const expected = [
    { name: "note" },
    { name: "file", filename: "x; y.txt" },
    { name: "file", filename: "a=b.txt" },
  ];
  for (let cut = 1; cut < bytes.length; cut++) {
    const names = new MultipartNames(boundary);
    names.push(bytes.subarray(0, cut));
    names.push(bytes.subarray(cut));
    assertEquals([names.complete, names.parts], [true, expected], `cut at ${cut}`);
  }
});

Deno.test("multipart names: a body cut short is not complete", async () => {
  const form = new FormData();
  form.append("file", new File(["abc"], "a.txt"));
  const { bytes, boundary } = await encoded(form);
  const names = scan(bytes.subarray(0, bytes.length - 10), boundary, 5);
  assertEquals([names.complete, names.parts], [false, [{ name: "file", filename: "a.txt" }]]);
});

Deno.test("multipart names: Content-Disposition values, quoted, escaped and extended", () => {
  const cases: [string, string][] = [
    [' form-data; name="f"; filename="x; y=z.pdf"', "x; y=z.pdf"],
    ["form-data; name=f; filename=plain.txt", "plain.txt"],
    ['form-data; name="f"; filename="say \\"hi\\".txt"', 'say "hi".txt'],
    ['form-data; name="f"; filename="say %22hi%22.txt"', 'say "hi".txt'],
    ['form-data; name="f"; filename="a.txt"; filename*=UTF-8\'\'%C3%A9t%C3%A9.txt', "été.txt"],
    // An extended name that is not UTF-8 percent-encoding leaves the plain one.
    ["form-data; name=f; filename=a.txt; filename*=UTF-8''%FF", "a.txt"],
    ['form-data; name="f"; filename="unterminated; x', "unterminated; x"],
  ];
  for (const [value, filename] of cases) {
    assertEquals(dispositionNames(value), { name: "f", filename }, value);
  }
});

Deno.test("multipart names: headers too long to keep lose the names, not the end", () => {
  const body = new TextEncoder().encode(
    '--b\r\nContent-Disposition: form-data; name="a"\r\nX-Pad: ' + "p".repeat(20_000) +
      '\r\n\r\nA\r\n--b\r\nContent-Disposition: form-data; name="c"\r\n\r\nC\r\n--b--\r\n' +
      "an epilogue, ignored",
  );
  const names = new MultipartNames("b");
  for (let i = 0; i < body.length; i += 1000) names.push(body.subarray(i, i + 1000));
  assertEquals([names.ended, names.complete, names.parts], [true, false, [{ name: "c" }]]);
});

Deno.test("multipart names: content made of the boundary's characters and near-delimiters", () => {
  const boundary = "a".repeat(70);
  const near = `\r\n--${"a".repeat(69)}b`;
  const body = new TextEncoder().encode(
    `--${boundary}\r\nContent-Disposition: form-data; name="file"; filename="x; y.bin"\r\n\r\n` +
      "a".repeat(5000) + near.repeat(50) + "\r\r\n-\r\n--" +
      `\r\n--${boundary}\r\nContent-Disposition: form-data; name="n"\r\n\r\n1` +
      `\r\n--${boundary}--\r\n`,
  );
  for (const chunk of [3, 100, 4096]) {
    const names = new MultipartNames(boundary);
    for (let i = 0; i < body.length; i += chunk) names.push(body.subarray(i, i + chunk));
    assertEquals([names.complete, names.parts], [true, [
      { name: "file", filename: "x; y.bin" },
      { name: "n" },
    ]], `chunks of ${chunk}`);
  }
});
