;; Reads a riemann.config with the real Clojure reader, form by form, and prints how many forms
;; it holds. A syntax error (unbalanced parens, a bad literal) throws. Riemann's own namespaces are
;; not here, so the forms are read, not evaluated.
(let [path (first *command-line-args*)]
  (with-open [r (java.io.PushbackReader. (clojure.java.io/reader path))]
    (loop [n 0]
      (let [form (read {:eof ::eof} r)]
        (if (= form ::eof)
          (println "forms:" n)
          (recur (inc n)))))))
