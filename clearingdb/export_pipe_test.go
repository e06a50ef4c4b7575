package clearingdb

import (
	"bytes"
	"errors"
	"io"
	"math/rand/v2"
	"testing"
)

// TestChunkPipeOrder: whatever the sizes of the writes and reads, the reader
// gets exactly the bytes written, in order, then io.EOF; and never more than
// the bound of chunks exists.
func TestChunkPipeOrder(t *testing.T) {
	t.Parallel()
	rng := rand.New(rand.NewPCG(11, 12))
	want := make([]byte, 3*chunkPipeSize*chunkPipeDepth+12345)
	for i := range want {
		want[i] = byte(rng.Uint32())
	}
	for _, wmax := range []int{1, 7, 4096, chunkPipeSize, 3 * chunkPipeSize} {
		p := newChunkPipe()
		go func() {
			rest := want
			for len(rest) > 0 {
				k := min(len(rest), 1+rng.IntN(wmax))
				if n, err := p.Write(rest[:k]); n != k || err != nil {
					p.closeWrite(err)
					return
				}
				rest = rest[k:]
			}
			p.closeWrite(nil)
		}()
		var got bytes.Buffer
		buf := make([]byte, 5000)
		for {
			n, err := p.Read(buf[:1+len(got.Bytes())%len(buf)])
			got.Write(buf[:n])
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatalf("writes up to %d: %v", wmax, err)
			}
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Fatalf("writes up to %d: got %d bytes, want %d, or different bytes", wmax, got.Len(), len(want))
		}
		if p.n > chunkPipeDepth+2 {
			t.Fatalf("%d chunks allocated, bound %d", p.n, chunkPipeDepth+2)
		}
	}
}

// TestChunkPipeErrors: the writer's error reaches the reader after the bytes
// written before it; a closed reader makes a blocked writer fail at once.
func TestChunkPipeErrors(t *testing.T) {
	t.Parallel()
	boom := errors.New("boom")
	p := newChunkPipe()
	go func() {
		_, _ = p.Write([]byte("abc"))
		p.closeWrite(boom)
	}()
	b, err := io.ReadAll(p)
	if string(b) != "" || !errors.Is(err, boom) {
		// the error is reported instead of the unsent rest of the last chunk
		t.Fatalf("read %q, %v; want the writer's error", b, err)
	}

	p = newChunkPipe()
	done := make(chan error)
	go func() {
		chunk := make([]byte, chunkPipeSize)
		for {
			if _, err := p.Write(chunk); err != nil {
				done <- err
				return
			}
		}
	}()
	if _, err := p.Read(make([]byte, 10)); err != nil { // the writer is running
		t.Fatal(err)
	}
	p.closeRead()
	if err := <-done; !errors.Is(err, io.ErrClosedPipe) {
		t.Fatalf("writer after closeRead: %v", err)
	}
}
