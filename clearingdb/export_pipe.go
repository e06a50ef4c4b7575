package clearingdb

import (
	"io"
	"sync"
)

// chunkPipe connects a running COPY (the writer: pgx receiving rows, the
// pseudonymizer) with the bundle writer that reads it (checks, hashes,
// writes the file), like io.Pipe, but with a bounded queue of filled chunks
// between them instead of a hand-over of every write. With io.Pipe the two
// sides ran in lockstep: whenever the reader was busy the COPY stopped
// reading its socket, and PostgreSQL stopped sending; with the queue each
// side runs while it has CPU, which on a machine shared with PostgreSQL
// removed a third of the wall time of an export (bench/README.md).
//
// Memory is bounded: at most chunkPipeDepth chunks queued, one being filled
// and one being read, of chunkPipeSize bytes each (≈ 1 MiB in all).
type chunkPipe struct {
	full chan []byte // filled chunks, in order; closed by closeWrite
	free chan []byte // chunks the reader is done with
	done chan struct{}
	once sync.Once
	err  error // the writer's error, set before full is closed

	w   []byte // the chunk being filled (writer side)
	n   int    // chunks allocated so far (writer side)
	cur []byte // the unread rest of the chunk being read (reader side)
	buf []byte // the chunk cur points into (reader side)
}

const (
	chunkPipeSize  = 64 << 10
	chunkPipeDepth = 14
)

func newChunkPipe() *chunkPipe {
	return &chunkPipe{full: make(chan []byte, chunkPipeDepth), free: make(chan []byte, chunkPipeDepth+2),
		done: make(chan struct{})}
}

// Write queues p (writer side). It blocks while the queue is full and fails
// with io.ErrClosedPipe once the reader has closed.
func (c *chunkPipe) Write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if c.w == nil {
			b, err := c.chunk()
			if err != nil {
				return n - len(p), err
			}
			c.w = b
		}
		k := copy(c.w[len(c.w):cap(c.w)], p)
		c.w, p = c.w[:len(c.w)+k], p[k:]
		if len(c.w) == cap(c.w) {
			if err := c.send(); err != nil {
				return n - len(p), err
			}
		}
	}
	return n, nil
}

// chunk returns an empty chunk: a returned one, a new one while fewer than
// the bound exist, else it waits for one.
func (c *chunkPipe) chunk() ([]byte, error) {
	select {
	case b := <-c.free:
		return b[:0], nil
	default:
	}
	if c.n < chunkPipeDepth+2 {
		c.n++
		return make([]byte, 0, chunkPipeSize), nil
	}
	select {
	case b := <-c.free:
		return b[:0], nil
	case <-c.done:
		return nil, io.ErrClosedPipe
	}
}

func (c *chunkPipe) send() error {
	select {
	case c.full <- c.w:
		c.w = nil
		return nil
	case <-c.done:
		return io.ErrClosedPipe
	}
}

// closeWrite queues what is left and ends the stream (writer side): the
// reader sees err after the last byte, or io.EOF for nil.
func (c *chunkPipe) closeWrite(err error) {
	if err == nil && len(c.w) > 0 {
		err = c.send()
	}
	c.err = err
	close(c.full)
}

// Read returns queued bytes in order (reader side).
func (c *chunkPipe) Read(p []byte) (int, error) {
	for len(c.cur) == 0 {
		if c.buf != nil {
			select {
			case c.free <- c.buf:
			default: // cannot happen: free holds every chunk
			}
			c.buf = nil
		}
		b, ok := <-c.full
		if !ok {
			if c.err != nil {
				return 0, c.err
			}
			return 0, io.EOF
		}
		c.buf, c.cur = b, b
	}
	n := copy(p, c.cur)
	c.cur = c.cur[n:]
	return n, nil
}

// closeRead makes every pending and later Write fail (reader side).
func (c *chunkPipe) closeRead() {
	c.once.Do(func() { close(c.done) })
}
