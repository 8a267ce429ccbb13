/*
 * VIRNUCPRO: one FASTA per sample -> length-balanced shards -> prepare (CPU) ->
 * DNABERT-S and ESM-2 embeddings (GPU) -> classify (joined by shard) -> per-sample summary.
 * Every process is one call of the virnucpro CLI; this file only wires channels.
 */
include { SPLIT_FASTA   } from '../modules/local/split_fasta'
include { PREPARE       } from '../modules/local/prepare'
include { EMBED_DNA     } from '../modules/local/embed_dna'
include { EMBED_PROTEIN } from '../modules/local/embed_protein'
include { CLASSIFY      } from '../modules/local/classify'
include { SUMMARIZE     } from '../modules/local/summarize'

workflow VIRNUCPRO {
    take:
    ch_input    // channel: [ val(meta: [id: sample]), path(fasta) ]
    ch_models   // value channel: path(models directory)
    shard_size  // bases per shard
    chunk_size  // 300 or 500

    main:
    SPLIT_FASTA(ch_input, shard_size)

    // one item per shard; meta.id = <sample>.<shard>, meta.shard is the file prefix
    ch_shards = SPLIT_FASTA.out.shards.flatMap { meta, shards ->
        def files = shards instanceof List ? shards : [shards]
        files.collect { shard ->
            def name = shard.getName().replaceAll(/\.fa$/, '')
            def shard_meta = [id: "${meta.id}.${name}", sample: meta.id, shard: name, n_shards: files.size()]
            [shard_meta, shard]
        }
    }

    PREPARE(ch_shards, chunk_size)
    EMBED_DNA(PREPARE.out.nucleotide, ch_models)
    EMBED_PROTEIN(PREPARE.out.protein, ch_models)

    // join the two feature files of each shard by its meta (sample + shard); a shard missing
    // one (its task failed and was ignored) is left out here and marked unfinished by SUMMARIZE
    ch_features = EMBED_DNA.out.features.join(EMBED_PROTEIN.out.features, failOnDuplicate: true)
    CLASSIFY(ch_features, ch_models, chunk_size)

    // A sample's shard files, as soon as all of its shards are done. With errorStrategy
    // 'ignore' a failed shard's files never come: the group is then emitted at the end
    // (remainder), or not at all when every shard failed (join remainder), and SUMMARIZE
    // marks the sequences of every shard in split's manifest without results 'unfinished'.
    ch_shard_files = PREPARE.out.sequences
        .mix(CLASSIFY.out.tsv, CLASSIFY.out.json)
        .map { meta, file -> [groupKey(meta.sample, meta.n_shards * 3), file] }
        .groupTuple(remainder: true)
        .map { sample, files -> [sample.toString(), files] }
    ch_sample_files = SPLIT_FASTA.out.manifest
        .map { meta, manifest -> [meta.id, manifest] }
        .join(ch_shard_files, remainder: true)
        .map { sample, manifest, files -> [[id: sample], manifest, (files ?: []).toSorted { f -> f.getName() }] }
    SUMMARIZE(ch_sample_files)

    ch_versions = SPLIT_FASTA.out.versions.first()
        .mix(PREPARE.out.versions.first(), EMBED_DNA.out.versions.first(), EMBED_PROTEIN.out.versions.first())
        .mix(CLASSIFY.out.versions.first(), SUMMARIZE.out.versions.first())

    emit:
    results      = SUMMARIZE.out.results
    highestscore = SUMMARIZE.out.highestscore
    summary      = SUMMARIZE.out.summary
    run_json     = SUMMARIZE.out.run_json
    versions     = ch_versions
}
