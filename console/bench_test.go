package console_test

import (
	"io"
	"net/http"
	"testing"

	"gongji/console"
)

// BenchmarkConsole measures every page and API endpoint of the console on a
// demo-sized settled period (20 000 usages in October, every one of the 387
// pooling regions of the 32 provinces paying and receiving), served over mutual
// TLS to an operator (a kept-alive connection: the handshake is not in the
// figure). The target is under a second each.
//
//	go test ./console -run '^$' -bench Console -benchtime 20x
func BenchmarkConsole(b *testing.B) {
	fx := buildFixture(b, 20000)
	e := startConsole(b, fx, console.Options{})
	feedLive(b, e)
	c := e.client(e.certs, operator)
	c.Transport.(*http.Transport).DisableKeepAlives = false
	paths := []string{
		"/api/periods",
		"/api/period/202610/overview", "/period/202610/overview",
		"/api/period/202610/positions", "/period/202610/positions",
		"/api/period/202610/flows", "/period/202610/flows",
		"/api/period/202610/prepay", "/period/202610/prepay",
		"/api/period/202610/exceptions", "/period/202610/exceptions",
		"/api/period/202610/province/440000", "/period/202610/province/440000",
		"/api/period/202610/province/510000", "/period/202610/province/510000",
		"/api/live", "/live",
		"/static/vendor/echarts.min.js",
		"/period/202610/download/workbook.xlsx",
		"/period/202610/download/bundle.zip",
	}
	for _, p := range paths {
		b.Run(p, func(b *testing.B) {
			var n int64
			for b.Loop() {
				resp, err := c.Get("https://" + e.addr + p)
				if err != nil {
					b.Fatal(err)
				}
				m, err := io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					b.Fatalf("%s: %d %v", p, resp.StatusCode, err)
				}
				n = m
			}
			b.ReportMetric(float64(n), "bytes/op")
		})
	}
}
