package console

import "time"

// SampleLive takes one sample of the registry at now: tests drive the live
// page's sampler themselves (Options.LiveInterval < 0), so rates are exact.
func (s *Server) SampleLive(now time.Time) { s.live.sample(now, nil) }
