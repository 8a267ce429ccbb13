process SUMMARIZE {
    tag "${meta.id}"
    label 'process_single'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cpu'

    input:
    // split's shards.tsv (every shard and sequence expected), and the files of the shards
    // that finished: <shard>.sequences.tsv, <shard>.scores.tsv and <shard>.scores.json
    tuple val(meta), path(manifest), path(shard_files)

    output:
    tuple val(meta), path("prediction_results.txt")             , emit: results
    tuple val(meta), path("prediction_results_highestscore.csv"), emit: highestscore
    tuple val(meta), path("virnucpro_summary.tsv")              , emit: summary
    tuple val(meta), path("run.json")                           , emit: run_json
    path "versions.yml"                                         , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    def args = task.ext.args ?: ''
    """
    virnucpro summarize --manifest ${manifest} --outdir . ${args} ${shard_files}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    touch prediction_results.txt prediction_results_highestscore.csv virnucpro_summary.tsv
    echo '{}' > run.json

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
