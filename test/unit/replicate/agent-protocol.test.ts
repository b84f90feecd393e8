import fc from 'fast-check';
import {
  AgentProtocolError,
  encodeAgentMessage,
  errorReplyFor,
  LineSplitter,
  parseAgentMessage,
  SplitLine,
} from '../../../lib/replicate/agent-protocol';

function rejection(line: string): AgentProtocolError {
  try {
    parseAgentMessage(line);
  } catch (e) {
    expect(e).toBeInstanceOf(AgentProtocolError);
    return e as AgentProtocolError;
  }
  throw new Error(`accepted: ${line}`);
}

const lines = (out: SplitLine[]) => out.map((p) => (p.kind === 'line' ? p.line : `<overlong ${p.excerpt.slice(0, 8)}>`));

describe('parseAgentMessage', () => {
  it('reads every message type of protocol v1 with its fields', () => {
    expect(parseAgentMessage('{"type":"hello","version":1,"role":"agent","name":"qemu"}')).toEqual({ type: 'hello', version: 1, role: 'agent', name: 'qemu' });
    expect(parseAgentMessage('{"type":"hello","version":2,"role":"agent","name":"qemu"}')).toEqual({ type: 'hello', version: 2, role: 'agent', name: 'qemu' });
    expect(parseAgentMessage('{"type":"checkpoint-done","epoch":4,"ms":61.5,"bytes":9,"pages":2,"port":"svms3"}')).toEqual({ type: 'checkpoint-done', epoch: 4, ms: 61.5, bytes: 9, pages: 2, port: 'svms3' });
    expect(parseAgentMessage('{"type":"checkpoint","epoch":3,"reason":"mismatch","flow":"tcp a > b"}')).toEqual({ type: 'checkpoint', epoch: 3, reason: 'mismatch', flow: 'tcp a > b' });
    expect(parseAgentMessage('{"type":"checkpoint","epoch":4,"reason":"manual"}')).toEqual({ type: 'checkpoint', epoch: 4, reason: 'manual' });
    expect(parseAgentMessage('{"type":"checkpoint-done","epoch":3,"ms":12.5,"bytes":4096,"pages":1}')).toEqual({ type: 'checkpoint-done', epoch: 3, ms: 12.5, bytes: 4096, pages: 1 });
    expect(parseAgentMessage('{"type":"checkpoint-done","epoch":3,"ms":0,"bytes":0}')).toEqual({ type: 'checkpoint-done', epoch: 3, ms: 0, bytes: 0 });
    expect(parseAgentMessage('{"type":"checkpoint-failed","epoch":3,"error":"migrate failed"}')).toEqual({ type: 'checkpoint-failed', epoch: 3, error: 'migrate failed' });
    expect(parseAgentMessage('{"type":"heartbeat","primary":"up","backup":"paused"}')).toEqual({ type: 'heartbeat', primary: 'up', backup: 'paused' });
    expect(parseAgentMessage('{"type":"primary-down","reason":"qemu exited"}')).toEqual({ type: 'primary-down', reason: 'qemu exited' });
    expect(parseAgentMessage('{"type":"backup-down","reason":"qmp closed"}')).toEqual({ type: 'backup-down', reason: 'qmp closed' });
    expect(parseAgentMessage('{"type":"failover","epoch":9}')).toEqual({ type: 'failover', epoch: 9 });
    expect(parseAgentMessage('{"type":"reprotect","epoch":10}')).toEqual({ type: 'reprotect', epoch: 10 });
    expect(parseAgentMessage('{"type":"error","error":"bad line","line":"{"}')).toEqual({ type: 'error', error: 'bad line', line: '{' });
  });

  it('ignores fields a message does not define', () => {
    expect(parseAgentMessage('{"type":"heartbeat","primary":"up","backup":"up","load":0.5}')).toEqual({ type: 'heartbeat', primary: 'up', backup: 'up' });
  });

  it('returns an unknown type as such, with the object, instead of failing', () => {
    expect(parseAgentMessage('{"type":"stats","cpu":3}')).toEqual({ type: 'unknown', unknownType: 'stats', raw: { type: 'stats', cpu: 3 } });
  });

  it('round-trips what it encodes', () => {
    const msg = { type: 'checkpoint' as const, epoch: 7, reason: 'queue' as const, flow: 'udp x > y' };
    const line = encodeAgentMessage(msg);
    expect(line.endsWith('\n')).toBe(true);
    expect(parseAgentMessage(line.trimEnd())).toEqual(msg);
  });

  it.each([
    ['not JSON', '{"type":"hello"', 'bad-json'],
    ['an empty line', '', 'bad-json'],
    ['an array', '[1,2]', 'not-an-object'],
    ['null', 'null', 'not-an-object'],
    ['a number', '42', 'not-an-object'],
    ['no type', '{"epoch":1}', 'missing-field'],
    ['a numeric type', '{"type":7}', 'bad-field'],
    ['hello without version', '{"type":"hello","role":"agent","name":"a"}', 'missing-field'],
    ['hello of version 4', '{"type":"hello","version":4,"role":"agent","name":"a"}', 'bad-version'],
    ['checkpoint-done with a port that is no interface name', '{"type":"checkpoint-done","epoch":1,"ms":1,"bytes":1,"port":"eth0; rm -rf /"}', 'bad-field'],
    ['hello with version "1"', '{"type":"hello","version":"1","role":"agent","name":"a"}', 'bad-version'],
    ['hello with an unknown role', '{"type":"hello","version":1,"role":"boss","name":"a"}', 'bad-field'],
    ['hello without name', '{"type":"hello","version":1,"role":"agent"}', 'missing-field'],
    ['checkpoint with a negative epoch', '{"type":"checkpoint","epoch":-1,"reason":"manual"}', 'bad-field'],
    ['checkpoint with a fractional epoch', '{"type":"checkpoint","epoch":1.5,"reason":"manual"}', 'bad-field'],
    ['checkpoint with a string epoch', '{"type":"checkpoint","epoch":"1","reason":"manual"}', 'bad-field'],
    ['checkpoint with an unknown reason', '{"type":"checkpoint","epoch":1,"reason":"whim"}', 'bad-field'],
    ['checkpoint with a numeric flow', '{"type":"checkpoint","epoch":1,"reason":"manual","flow":5}', 'bad-field'],
    ['checkpoint-done without bytes', '{"type":"checkpoint-done","epoch":1,"ms":3}', 'missing-field'],
    ['checkpoint-done with negative ms', '{"type":"checkpoint-done","epoch":1,"ms":-3,"bytes":0}', 'bad-field'],
    ['checkpoint-done with fractional pages', '{"type":"checkpoint-done","epoch":1,"ms":3,"bytes":0,"pages":0.5}', 'bad-field'],
    ['checkpoint-failed without error', '{"type":"checkpoint-failed","epoch":1}', 'missing-field'],
    ['heartbeat with an unknown liveness', '{"type":"heartbeat","primary":"up","backup":"sleepy"}', 'bad-field'],
    ['heartbeat without backup', '{"type":"heartbeat","primary":"up"}', 'missing-field'],
    ['primary-down with a numeric reason', '{"type":"primary-down","reason":1}', 'bad-field'],
    ['failover without epoch', '{"type":"failover"}', 'missing-field'],
    ['error without error', '{"type":"error"}', 'missing-field'],
  ])('rejects %s, saying why', (_what, line, kind) => {
    const e = rejection(line);
    expect(e.kind).toBe(kind);
    expect(e.why.length).toBeGreaterThan(0);
    expect(e.excerpt).toBe(line);
    expect(e.message).toContain(e.why);
  });

  it('names the field and what it got', () => {
    const e = rejection('{"type":"heartbeat","primary":"up","backup":"sleepy"}');
    expect(e.why).toBe('heartbeat: field "backup" must be one of up, down, paused, got "sleepy"');
  });

  it('keeps only the beginning of a long offending line', () => {
    const e = rejection(`{"type":"hello","junk":"${'x'.repeat(1000)}`);
    expect(e.excerpt.length).toBeLessThan(130);
    expect(errorReplyFor(e)).toEqual({ type: 'error', error: e.why, line: e.excerpt });
  });

  it('never throws anything but AgentProtocolError, whatever the line', () => {
    fc.assert(fc.property(fc.oneof(fc.string(), fc.json(), fc.jsonValue().map((v) => JSON.stringify({ type: 'checkpoint-done', epoch: v, ms: v, bytes: v }))), (line) => {
      try {
        parseAgentMessage(line);
      } catch (e) {
        return e instanceof AgentProtocolError;
      }
      return true;
    }));
  });
});

describe('LineSplitter', () => {
  it('joins a line split across reads, even inside a UTF-8 character', () => {
    const s = new LineSplitter();
    const bytes = Buffer.from('{"type":"error","error":"é"}\n');
    const cut = bytes.indexOf(0xc3) + 1;
    expect(s.push(bytes.subarray(0, cut))).toEqual([]);
    expect(s.pendingBytes).toBe(cut);
    expect(lines(s.push(bytes.subarray(cut)))).toEqual(['{"type":"error","error":"é"}']);
    expect(s.pendingBytes).toBe(0);
  });

  it('returns every line of a read that carries several, and keeps the unfinished tail', () => {
    const s = new LineSplitter();
    expect(lines(s.push(Buffer.from('a\nb\nc')))).toEqual(['a', 'b']);
    expect(lines(s.push(Buffer.from('d\n')))).toEqual(['cd']);
  });

  it('strips CRLF endings and skips blank lines', () => {
    const s = new LineSplitter();
    expect(lines(s.push(Buffer.from('a\r\n\r\n\nb\r')))).toEqual(['a']);
    expect(lines(s.push(Buffer.from('\n')))).toEqual(['b']);
  });

  it('gives the same lines however the stream is cut', () => {
    fc.assert(fc.property(fc.array(fc.stringMatching(/^[a-z{}":, é]{1,30}$/), { maxLength: 8 }), fc.array(fc.nat(), { maxLength: 10 }), fc.boolean(), (msgs, cuts, crlf) => {
      const nonBlank = msgs.filter((m) => m.trim().length > 0);
      const stream = Buffer.from(msgs.map((m) => m + (crlf ? '\r\n' : '\n')).join(''));
      const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((a, b) => a - b);
      const s = new LineSplitter();
      const got: string[] = [];
      let from = 0;
      for (const p of [...points, stream.length]) {
        got.push(...lines(s.push(stream.subarray(from, p))));
        from = p;
      }
      expect(got).toEqual(nonBlank);
    }));
  });

  it('reports an overlong line once, as soon as it is too long, and reads the next line normally', () => {
    const s = new LineSplitter(16);
    const first = s.push(Buffer.from('x'.repeat(10)));
    expect(first).toEqual([]);
    const second = s.push(Buffer.from('y'.repeat(10)));
    expect(second).toHaveLength(1);
    expect(second[0]).toMatchObject({ kind: 'overlong' });
    expect((second[0] as { excerpt: string }).excerpt.startsWith('xxxxxxxxxxyy')).toBe(true);
    expect(s.pendingBytes).toBe(0);
    expect(s.push(Buffer.from('z'.repeat(100)))).toEqual([]);
    expect(s.pendingBytes).toBe(0);
    expect(lines(s.push(Buffer.from('zz\nok\n')))).toEqual(['ok']);
  });

  it('reports an overlong line that arrives whole in one read', () => {
    const s = new LineSplitter(4);
    expect(lines(s.push(Buffer.from('abcd\nabcde\nabc\r\n')))).toEqual(['abcd', '<overlong abcde>', 'abc']);
  });

  it('accepts a line of exactly the limit ending in CRLF', () => {
    const s = new LineSplitter(4);
    expect(lines(s.push(Buffer.from('abcd\r\n')))).toEqual(['abcd']);
  });

  it('forgets an unfinished line on reset', () => {
    const s = new LineSplitter();
    s.push(Buffer.from('{"type":'));
    s.reset();
    expect(lines(s.push(Buffer.from('{}\n')))).toEqual(['{}']);
  });
});
